// ForwardChunks: a first replica's half of the cluster write path. The
// client sends each chunk once, to its first placement candidate; that node
// stores it and sends it on to the next `copies` candidates (fan-out from
// the first node, all targets in parallel). A peer that fails is replaced
// by the chunk's next candidate, so a node dying mid-write does not fail
// the save while candidates remain. Forwarded chunks carry no forward list,
// so a chunk is never forwarded twice.
//
// Thread-safe (blocks on the peers; run it on ClusterHooks::forward_pool).
#ifndef SNAPBACK_SERVER_FORWARD_H_
#define SNAPBACK_SERVER_FORWARD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/codec.h"
#include "server/peers.h"

namespace snapback::server {

struct ForwardSpec {
  std::vector<uint32_t> forward;  // indexes into the stream's peers
  uint32_t copies = 0;            // further copies wanted
};

struct ForwardResult {
  uint64_t bytes = 0;  // encoded bytes sent to peers
  int failovers = 0;   // peer puts that failed and were re-placed
};

// OK when every chunk with copies > 0 is durable on that many peers.
// UNAVAILABLE naming the first chunk whose candidates ran out.
absl::Status ForwardChunks(const std::vector<EncodedChunk>& chunks,
                           const std::vector<ForwardSpec>& specs,
                           const std::vector<std::string>& peers, Peers* clients,
                           ForwardResult* result);

}  // namespace snapback::server

#endif  // SNAPBACK_SERVER_FORWARD_H_
