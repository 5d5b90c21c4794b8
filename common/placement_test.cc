#include "common/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace snapback {
namespace {

ChunkId IdOf(int i) { return Sha256(absl::StrCat("chunk-", i)); }

std::vector<PlacementNode> Nodes(int n, int domains) {
  std::vector<PlacementNode> nodes;
  for (int i = 0; i < n; ++i) {
    nodes.push_back({absl::StrCat("node-", i),
                     domains > 0 ? absl::StrCat("rack-", i % domains) : ""});
  }
  return nodes;
}

TEST(PlacementTest, OrderIsAPermutationAndDeterministic) {
  const auto nodes = Nodes(5, 0);
  for (int c = 0; c < 50; ++c) {
    std::vector<int> a = PlacementOrder(IdOf(c), nodes);
    std::vector<int> b = PlacementOrder(IdOf(c), nodes);
    EXPECT_EQ(a, b);
    EXPECT_EQ(std::set<int>(a.begin(), a.end()).size(), nodes.size());
  }
}

TEST(PlacementTest, FirstChoicesSpreadEvenly) {
  const auto nodes = Nodes(4, 0);
  std::map<int, int> first;
  const int n = 4000;
  for (int c = 0; c < n; ++c) ++first[PlacementOrder(IdOf(c), nodes)[0]];
  for (const auto& [node, count] : first) {
    EXPECT_GT(count, n / 4 * 0.85) << "node " << node;
    EXPECT_LT(count, n / 4 * 1.15) << "node " << node;
  }
}

TEST(PlacementTest, RemovingANodeMovesOnlyItsChunks) {
  auto nodes = Nodes(5, 0);
  auto fewer = nodes;
  fewer.erase(fewer.begin() + 2);  // node-2 leaves
  int moved = 0;
  for (int c = 0; c < 2000; ++c) {
    const std::string before = nodes[PlacementOrder(IdOf(c), nodes)[0]].id;
    const std::string after = fewer[PlacementOrder(IdOf(c), fewer)[0]].id;
    if (before != "node-2") {
      EXPECT_EQ(before, after) << "chunk " << c << " moved without reason";
    } else {
      ++moved;
      // Its new home is its old second choice.
      EXPECT_EQ(after, nodes[PlacementOrder(IdOf(c), nodes)[1]].id);
    }
  }
  EXPECT_GT(moved, 0);
}

TEST(PlacementTest, FirstCandidatesSpanDistinctDomains) {
  // 6 nodes in 3 racks: the first 3 candidates are in 3 different racks.
  const auto nodes = Nodes(6, 3);
  for (int c = 0; c < 200; ++c) {
    std::vector<int> order = PlacementOrder(IdOf(c), nodes);
    std::set<std::string> racks;
    for (int k = 0; k < 3; ++k) racks.insert(nodes[order[k]].domain);
    EXPECT_EQ(racks.size(), 3u) << "chunk " << c;
  }
}

TEST(PlacementTest, OneDomainStillGivesEveryNode) {
  auto nodes = Nodes(3, 1);
  std::vector<int> order = PlacementOrder(IdOf(7), nodes);
  EXPECT_EQ(order.size(), 3u);
}

}  // namespace
}  // namespace snapback
