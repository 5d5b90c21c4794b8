// The node map of ClusterTier on a fake clock: registration, heartbeats,
// UP -> SUSPECT -> DOWN by silence, a node back from DOWN is not trusted
// until reconciled, operator states, persistence, hostile input.
#include "coordinator/cluster_tier.h"

#include <gtest/gtest.h>

#include "common/clock.h"
#include "testing/test_util.h"

namespace snapback::coordinator {
namespace {

v1::NodeInfo Node(const std::string& id, const std::string& address,
                  const std::string& domain = "") {
  v1::NodeInfo n;
  n.set_node_id(id);
  n.set_address(address);
  n.set_failure_domain(domain);
  n.set_capacity_bytes(100 << 20);
  n.set_free_bytes(50 << 20);
  return n;
}

v1::NodeInfo Find(const v1::NodeMap& map, const std::string& id) {
  for (const auto& n : map.nodes()) {
    if (n.node_id() == id) return n;
  }
  ADD_FAILURE() << "no node " << id;
  return {};
}

class ClusterTierTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    tier_.reset();
    ClusterOptions o;
    o.clock = &clock_;
    o.suspect_after = absl::Seconds(3);
    o.down_after = absl::Seconds(10);
    auto t = ClusterTier::Open(dir_.path() + "/tier", o);
    ASSERT_TRUE(t.ok()) << t.status();
    tier_ = *std::move(t);
  }
  v1::NodeHeartbeatResponse Beat(const std::string& id, bool full = false) {
    v1::NodeHeartbeatRequest req;
    req.set_node_id(id);
    req.set_full(full);
    auto resp = tier_->Heartbeat(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : v1::NodeHeartbeatResponse();
  }

  testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<ClusterTier> tier_;
};

TEST_F(ClusterTierTest, SilenceMakesANodeSuspectThenDownAndTheVersionMoves) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1")).ok());
  ASSERT_TRUE(tier_->Register(Node("b", "127.0.0.1:2")).ok());
  const uint64_t v0 = tier_->MapVersion();
  clock_.Advance(absl::Seconds(2));
  Beat("a");
  Beat("b");
  tier_->Tick();
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_UP);
  EXPECT_EQ(tier_->MapVersion(), v0);

  clock_.Advance(absl::Seconds(4));  // b silent for 4 s, a beats
  Beat("a");
  tier_->Tick();
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_UP);
  EXPECT_EQ(Find(tier_->Map(), "b").state(), v1::NODE_SUSPECT);
  EXPECT_GT(tier_->MapVersion(), v0);

  clock_.Advance(absl::Seconds(7));  // b silent for 11 s
  Beat("a");
  tier_->Tick();
  EXPECT_EQ(Find(tier_->Map(), "b").state(), v1::NODE_DOWN);

  // Back from DOWN: UP again, but its copies do not count until reconciled,
  // and it takes no new chunks meanwhile.
  const uint64_t v1_ = tier_->MapVersion();
  v1::NodeHeartbeatResponse r = Beat("b");
  EXPECT_EQ(r.state(), v1::NODE_UP);
  v1::NodeInfo b = Find(tier_->Map(), "b");
  EXPECT_EQ(b.state(), v1::NODE_UP);
  EXPECT_FALSE(b.reconciled());
  EXPECT_GT(tier_->MapVersion(), v1_);
  for (const auto& n : tier_->WritableNodes()) EXPECT_NE(n.node_id(), "b");
}

TEST_F(ClusterTierTest, SuspectComesBackToUpWithoutReconciliation) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1")).ok());
  clock_.Advance(absl::Seconds(5));
  tier_->Tick();
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_SUSPECT);
  Beat("a");
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_UP);
}

TEST_F(ClusterTierTest, HeartbeatCarriesTheMapOnlyWhenItChanged) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1")).ok());
  v1::NodeHeartbeatRequest req;
  req.set_node_id("a");
  req.set_map_version(0);
  auto r = tier_->Heartbeat(req);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->has_map());
  req.set_map_version(r->map().version());
  r = tier_->Heartbeat(req);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_map());
  // Unknown node: told to register (e.g. after a coordinator rebuild).
  req.set_node_id("stranger");
  r = tier_->Heartbeat(req);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->reregister());
}

TEST_F(ClusterTierTest, AnUnreconciledNodeTakesNoChunksButCountsForTheDefaultCopies) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1")).ok());
  ASSERT_TRUE(tier_->Register(Node("b", "127.0.0.1:2")).ok());
  EXPECT_TRUE(tier_->WritableNodes().empty());  // not reconciled yet
  // A member being checked must not make new checkpoints keep 1 copy.
  EXPECT_EQ(tier_->DefaultReplication(), 2);
  v1::NodeHeartbeatRequest full;
  full.set_node_id("b");
  full.set_full(true);
  ASSERT_TRUE(tier_->Heartbeat(full).ok());
  EXPECT_EQ(tier_->DefaultReplication(), 1);  // a full node is not counted
}

TEST_F(ClusterTierTest, OperatorStatesAndRemovedNodesCannotReturn) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1")).ok());
  auto drained = tier_->SetNodeState("a", v1::NODE_DRAINING);
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(drained->state(), v1::NODE_DRAINING);
  Beat("a");  // heartbeats do not undo draining
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_DRAINING);
  EXPECT_EQ(tier_->SetNodeState("a", v1::NODE_SUSPECT).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->SetNodeState("nobody", v1::NODE_REMOVED).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(tier_->SetNodeState("a", v1::NODE_REMOVED).ok());
  EXPECT_EQ(tier_->Register(Node("a", "127.0.0.1:1")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  for (const auto& n : tier_->ReadableNodes()) EXPECT_NE(n.address(), "127.0.0.1:1");
}

TEST_F(ClusterTierTest, HostileRegistrationsAreRefused) {
  EXPECT_EQ(tier_->Register(Node("", "127.0.0.1:1")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->Register(Node("a/../b", "127.0.0.1:1")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->Register(Node(std::string(65, 'x'), "127.0.0.1:1")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->Register(Node("a", "")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tier_->Register(Node("a", "h:1", std::string(200, 'd'))).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::NodeHeartbeatRequest req;
  req.set_node_id("a");
  req.add_lost_ids("short");
  EXPECT_EQ(tier_->Heartbeat(req).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(tier_->Map().nodes().empty());
}

TEST_F(ClusterTierTest, TheMapSurvivesARestartWithAFreshGracePeriod) {
  ASSERT_TRUE(tier_->Register(Node("a", "127.0.0.1:1", "rack-1")).ok());
  ASSERT_TRUE(tier_->Register(Node("b", "127.0.0.1:2", "rack-2")).ok());
  const uint64_t version = tier_->MapVersion();
  clock_.Advance(absl::Minutes(5));  // both silent for long, then a restart
  Open();
  EXPECT_EQ(tier_->MapVersion(), version);
  ASSERT_EQ(tier_->Map().nodes_size(), 2);
  EXPECT_EQ(Find(tier_->Map(), "a").failure_domain(), "rack-1");
  tier_->Tick();
  // Not all declared DOWN at once by a restarted coordinator.
  EXPECT_EQ(Find(tier_->Map(), "a").state(), v1::NODE_UP);
}

}  // namespace
}  // namespace snapback::coordinator
