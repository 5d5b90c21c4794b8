#include "client/placed_writer.h"

#include <algorithm>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"

namespace snapback::internal_client {

ClusterView ClusterView::From(
    const google::protobuf::RepeatedPtrField<v1::NodeInfo>& nodes, int replication) {
  ClusterView view;
  for (const v1::NodeInfo& n : nodes) {
    view.nodes.push_back(n);
    view.placement.push_back({n.node_id(), n.failure_domain()});
  }
  view.replication = std::max(1, replication);
  return view;
}

absl::Status PlacedPut(Connection* conn, const ClusterView& view,
                       const std::vector<EncodedChunk>& chunks, PutSummary* summary) {
  const size_t n = view.nodes.size();
  const int copies = view.replication;
  if (static_cast<size_t>(copies) > n) {
    return absl::FailedPreconditionError(
        absl::StrCat(copies, " copies wanted but only ", n, " storage node(s)"));
  }
  std::vector<std::vector<int>> order(chunks.size());
  std::vector<size_t> first(chunks.size(), 0);  // index into order[i]
  for (size_t i = 0; i < chunks.size(); ++i) {
    order[i] = PlacementOrder(chunks[i].id, view.placement);
  }
  std::vector<size_t> todo(chunks.size());
  for (size_t i = 0; i < todo.size(); ++i) todo[i] = i;
  absl::Status last;
  while (!todo.empty()) {
    // Group by first candidate; each group is one stream whose chunks the
    // node forwards to the candidates after it.
    std::map<int, std::vector<size_t>> groups;
    for (size_t i : todo) {
      if (first[i] + copies > n) {
        return absl::UnavailableError(absl::StrCat(
            "chunk ", chunks[i].id.ShortHex(), " could not be stored on ", copies,
            " of the ", n, " storage nodes (last error: ", last.message(),
            "); retry the save when the storage nodes are back"));
      }
      groups[order[i][first[i]]].push_back(i);
    }
    std::vector<std::pair<int, std::vector<size_t>>> work(groups.begin(), groups.end());
    std::vector<absl::StatusOr<PutSummary>> results(work.size(),
                                                    absl::UnknownError("not run"));
    auto run = [&](size_t w) {
      const int target = work[w].first;
      absl::StatusOr<StorageClient*> client = conn->Storage(view.nodes[target].address());
      if (!client.ok()) {
        results[w] = client.status();
        return;
      }
      std::vector<EncodedChunk> subset;
      ForwardPlan plan;
      plan.copies = static_cast<uint32_t>(copies - 1);
      std::map<int, uint32_t> peer_index;
      for (size_t i : work[w].second) {
        subset.push_back(chunks[i]);
        std::vector<uint32_t> fwd;
        if (plan.copies > 0) {
          // The next copies-1 candidates and 3 spares to fail over to: the
          // node takes at most 64 peers, and a longer list buys nothing.
          const size_t last = std::min(order[i].size(), first[i] + 1 + plan.copies + 3);
          for (size_t k = first[i] + 1; k < last; ++k) {
            const int node = order[i][k];
            auto [it, added] = peer_index.emplace(node, plan.peers.size());
            if (added) plan.peers.push_back(view.nodes[node].address());
            fwd.push_back(it->second);
          }
        }
        plan.forward.push_back(std::move(fwd));
      }
      results[w] =
          plan.copies > 0 ? (*client)->Put(subset, plan) : (*client)->Put(subset);
    };
    if (work.size() == 1) {
      run(0);
    } else {
      std::vector<std::thread> threads;
      for (size_t w = 0; w < work.size(); ++w) threads.emplace_back(run, w);
      for (auto& t : threads) t.join();
    }
    std::vector<size_t> retry;
    for (size_t w = 0; w < work.size(); ++w) {
      if (results[w].ok()) {
        summary->stored += results[w]->stored;
        summary->already_present += results[w]->already_present;
        summary->bytes_sent += results[w]->bytes_sent;
        summary->bytes_written += results[w]->bytes_written;
        summary->bytes_forwarded += results[w]->bytes_forwarded;
        summary->forward_failovers += results[w]->forward_failovers;
        continue;
      }
      last = results[w].status();
      // A chunk that cannot be valid is not retried elsewhere.
      if (absl::IsInvalidArgument(last) || absl::IsDataLoss(last)) return last;
      for (size_t i : work[w].second) {
        ++first[i];
        retry.push_back(i);
      }
    }
    todo = std::move(retry);
  }
  return absl::OkStatus();
}

std::vector<std::string> ReadCandidates(const ClusterView& view, const ChunkId& id,
                                        const std::string& my_domain) {
  std::vector<int> order = PlacementOrder(id, view.placement);
  auto state_rank = [&](int node) {
    switch (view.nodes[node].state()) {
      case v1::NODE_UP:
        return 0;
      case v1::NODE_SUSPECT:
      case v1::NODE_DRAINING:
        return 1;
      default:
        return 2;
    }
  };
  std::vector<std::tuple<int, int, int, size_t>> keyed;
  for (size_t pos = 0; pos < order.size(); ++pos) {
    const int node = order[pos];
    const bool likely = pos < static_cast<size_t>(view.replication) + 1;
    const bool near =
        !my_domain.empty() && view.nodes[node].failure_domain() == my_domain;
    keyed.emplace_back(state_rank(node), likely ? 0 : 1, near ? 0 : 1, pos);
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<std::string> out;
  for (const auto& k : keyed) out.push_back(view.nodes[order[std::get<3>(k)]].address());
  return out;
}

}  // namespace snapback::internal_client
