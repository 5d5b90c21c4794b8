#include "common/placement.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "xxhash.h"

namespace snapback {

uint64_t PlacementScore(const ChunkId& chunk, const std::string& node_id) {
  const uint64_t seed = XXH3_64bits(node_id.data(), node_id.size());
  const absl::string_view bytes = chunk.AsBytes();
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), seed);
}

std::vector<int> PlacementOrder(const ChunkId& chunk,
                                absl::Span<const PlacementNode> nodes) {
  std::vector<std::pair<uint64_t, int>> scored;
  scored.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    scored.emplace_back(PlacementScore(chunk, nodes[i].id), static_cast<int>(i));
  }
  // Highest score first; ties (practically never) by node id for determinism.
  std::sort(scored.begin(), scored.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    return nodes[a.second].id < nodes[b.second].id;
  });
  // Domain key: the label, or the node's own id when it has none.
  auto domain = [&](int i) -> const std::string& {
    return nodes[i].domain.empty() ? nodes[i].id : nodes[i].domain;
  };
  absl::flat_hash_map<std::string, int> used;
  std::vector<int> order;
  order.reserve(scored.size());
  std::vector<char> taken(scored.size(), 0);
  for (size_t pos = 0; pos < scored.size(); ++pos) {
    // The least-used domain among the remaining nodes, then the best score.
    int best = -1;
    int best_use = 0;
    for (size_t k = 0; k < scored.size(); ++k) {
      if (taken[k]) continue;
      auto it = used.find(domain(scored[k].second));
      const int use = it == used.end() ? 0 : it->second;
      if (best < 0 || use < best_use) {
        best = static_cast<int>(k);
        best_use = use;
        if (use == 0) break;  // scored is in score order: nothing beats it
      }
    }
    taken[best] = 1;
    ++used[domain(scored[best].second)];
    order.push_back(scored[best].second);
  }
  return order;
}

}  // namespace snapback
