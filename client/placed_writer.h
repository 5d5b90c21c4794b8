// The client's half of the storage cluster (docs/cluster.md): where each
// chunk goes and where to read it, by rendezvous placement over the node
// list the coordinator hands out (common/placement.h).
//
// Writes: each chunk is sent once, to its first candidate, which stores it
// and forwards it to the next R-1 (the storage node's ForwardChunks); the
// training node's uplink carries each byte once. A first candidate that
// fails is replaced by the next in the chunk's order.
//
// Reads: a chunk's candidates in placement order, UP nodes first, and among
// the likely holders (the first R) the reader's own failure domain first.
//
// Internal to the client library. Thread-safe (no state).
#ifndef SNAPBACK_CLIENT_PLACED_WRITER_H_
#define SNAPBACK_CLIENT_PLACED_WRITER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/connection.h"
#include "common/codec.h"
#include "common/placement.h"
#include "rpc/storage_client.h"
#include "snapback/v1/cluster.pb.h"

namespace snapback::internal_client {

struct ClusterView {
  std::vector<v1::NodeInfo> nodes;
  std::vector<PlacementNode> placement;  // parallel to nodes
  int replication = 1;

  static ClusterView From(const google::protobuf::RepeatedPtrField<v1::NodeInfo>& nodes,
                          int replication);
  bool empty() const { return nodes.empty(); }
};

// Stores `chunks` with `view.replication` copies each. OK when every copy
// is durable; UNAVAILABLE when a chunk ran out of candidates.
absl::Status PlacedPut(Connection* conn, const ClusterView& view,
                       const std::vector<EncodedChunk>& chunks, PutSummary* summary);

// Addresses to read `id` from, best first (see the file comment).
std::vector<std::string> ReadCandidates(const ClusterView& view, const ChunkId& id,
                                        const std::string& my_domain);

}  // namespace snapback::internal_client

#endif  // SNAPBACK_CLIENT_PLACED_WRITER_H_
