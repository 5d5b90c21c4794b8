#include "server/forward.h"

#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace snapback::server {

absl::Status ForwardChunks(const std::vector<EncodedChunk>& chunks,
                           const std::vector<ForwardSpec>& specs,
                           const std::vector<std::string>& peers, Peers* clients,
                           ForwardResult* result) {
  struct State {
    size_t next = 0;    // next candidate of specs[i].forward to try
    uint32_t left = 0;  // copies still to make
  };
  std::vector<State> state(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) state[i].left = specs[i].copies;
  absl::Status last;
  for (;;) {
    // Each round: every chunk still short goes to its next untried
    // candidates, grouped per peer, all peers in parallel.
    std::map<uint32_t, std::vector<size_t>> plan;
    for (size_t i = 0; i < chunks.size(); ++i) {
      State& st = state[i];
      for (uint32_t k = 0; k < st.left; ++k) {
        if (st.next >= specs[i].forward.size()) {
          return absl::UnavailableError(absl::StrCat(
              "chunk ", chunks[i].id.ShortHex(), ": ", st.left, " more cop",
              st.left == 1 ? "y" : "ies", " needed but every peer it may go to failed",
              last.ok() ? "" : absl::StrCat(" (last: ", last.message(), ")"),
              "; retry when more storage nodes are up"));
        }
        plan[specs[i].forward[st.next++]].push_back(i);
      }
    }
    if (plan.empty()) return absl::OkStatus();
    std::vector<std::pair<uint32_t, std::vector<size_t>>> work(plan.begin(), plan.end());
    std::vector<absl::Status> status(work.size());
    std::vector<uint64_t> sent(work.size(), 0);
    auto run = [&](size_t w) {
      const std::string& address = peers[work[w].first];
      absl::StatusOr<internal_client::StorageClient*> client = clients->Client(address);
      if (!client.ok()) {
        status[w] = client.status();
        return;
      }
      std::vector<EncodedChunk> subset;
      subset.reserve(work[w].second.size());
      for (size_t i : work[w].second) subset.push_back(chunks[i]);
      absl::StatusOr<internal_client::PutSummary> put = (*client)->Put(subset);
      status[w] = put.status();
      if (put.ok()) sent[w] = put->bytes_sent;
    };
    if (work.size() == 1) {
      run(0);
    } else {
      std::vector<std::thread> threads;
      for (size_t w = 0; w < work.size(); ++w) threads.emplace_back(run, w);
      for (auto& t : threads) t.join();
    }
    for (size_t w = 0; w < work.size(); ++w) {
      if (status[w].ok()) {
        result->bytes += sent[w];
        for (size_t i : work[w].second) --state[i].left;
      } else {
        last = status[w];
        ++result->failovers;
        SNAPBACK_LOG(Warning,
                     "forwarding %d chunk(s) to %s failed; trying the next node: %s",
                     work[w].second.size(), peers[work[w].first], status[w].ToString());
      }
    }
  }
}

}  // namespace snapback::server
