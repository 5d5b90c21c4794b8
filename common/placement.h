// Rendezvous (highest random weight) placement of chunks on storage nodes.
//
// Every chunk has its own preference order over the nodes: each node scores
// xxh3-64(chunk id) seeded by xxh3-64(node id), highest first. Adding or
// removing one node moves only the chunks whose first choices it was
// (1/N of them), and every party that knows the same node list — clients,
// storage nodes, the coordinator — computes the same order without asking.
//
// Failure domains: the order is built greedily, at each position taking the
// highest-scoring remaining node among those whose domain is used least so
// far, so the first k candidates span min(k, domains) distinct domains. A
// node with an empty domain is its own domain.
//
// Pure functions; thread-safe.
#ifndef SNAPBACK_COMMON_PLACEMENT_H_
#define SNAPBACK_COMMON_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/hash.h"

namespace snapback {

struct PlacementNode {
  std::string id;      // stable node id (the hash input)
  std::string domain;  // failure domain label; "" = the node's own
};

// Indexes into `nodes`, in `chunk`'s order of preference (all of them).
std::vector<int> PlacementOrder(const ChunkId& chunk,
                                absl::Span<const PlacementNode> nodes);

// The HRW score of (chunk, node id); exposed for tests.
uint64_t PlacementScore(const ChunkId& chunk, const std::string& node_id);

}  // namespace snapback

#endif  // SNAPBACK_COMMON_PLACEMENT_H_
