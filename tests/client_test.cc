// The client library against a real embedded server (coordinator + storage
// in one process on 127.0.0.1:0, real RocksDB, real segment files): ranks as
// threads. Multi-process ranks and SIGKILL are in client_process_test.cc.
#include "snapback/client.h"

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rpc/storage_client.h"
#include "server/server.h"
#include "testing/server_fixture.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::MakeBytes;
using testing::TempDir;

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status _s = (expr);              \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

// The tensors of one rank at one step: every supported dtype, odd sizes
// (uneven chunk tails), a 1-byte tensor, a scalar and a blob. Deterministic
// in (rank, step) so any thread can recompute what should come back.
struct RankState {
  std::vector<std::string> bytes;  // backing memory
  std::vector<TensorView> tensors;
  std::string blob;

  RankState(int rank, int step) {
    struct Spec {
      const char* name;
      DType dtype;
      std::vector<int64_t> shape;
    };
    const Spec specs[] = {
        {"w.fp32", DType::kFloat32, {300, 77}},
        {"w.bf16", DType::kBFloat16, {12345}},
        {"w.fp16", DType::kFloat16, {3, 5, 7, 11}},
        {"q.int8", DType::kInt8, {70001}},
        {"pos.int64", DType::kInt64, {999}},
        {"one.byte", DType::kUInt8, {1}},
        {"scalar", DType::kFloat64, {}},
        {"empty", DType::kFloat32, {0, 4}},
    };
    bytes.reserve(std::size(specs));
    for (const Spec& spec : specs) {
      TensorView t;
      t.name = spec.name;
      t.dtype = spec.dtype;
      t.shape = spec.shape;
      bytes.push_back(MakeBytes(t.byte_length(),
                                rank * 1000003 + step * 7919 + bytes.size(),
                                spec.dtype == DType::kFloat32));
      tensors.push_back(t);
    }
    for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = bytes[i].data();
    blob = absl::StrCat("rng state of rank ", rank, " at step ", step);
  }
  std::vector<BlobView> blobs() const { return {{"rng", blob.data(), blob.size()}}; }
};

void ExpectRestored(const RestoreResult& r, const RankState& want) {
  ASSERT_EQ(r.tensors.size(), want.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    const RestoredTensor& got = r.tensors[i];
    EXPECT_EQ(got.name, want.tensors[i].name);
    EXPECT_EQ(got.dtype, want.tensors[i].dtype);
    EXPECT_EQ(got.shape, want.tensors[i].shape);
    EXPECT_TRUE(got.bytes == want.bytes[i]) << "tensor " << got.name << " differs";
  }
  ASSERT_EQ(r.blobs.size(), 1u);
  EXPECT_EQ(r.blobs[0].bytes, want.blob);
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::StartEmbeddedServer(dir_.path() + "/node");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ClientOptions co;
    co.endpoint = server_->address();
    auto client = Client::Connect(co);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::unique_ptr<Checkpointer> NewCheckpointer(const std::string& job, int rank,
                                                int world, int64_t incarnation = 1,
                                                CheckpointerOptions o = {}) {
    o.job_id = job;
    o.rank = rank;
    o.world_size = world;
    o.incarnation = incarnation;
    auto ck = client_->NewCheckpointer(o);
    EXPECT_TRUE(ck.ok()) << ck.status();
    return ck.ok() ? *std::move(ck) : nullptr;
  }

  // Chunks the node stores.
  uint64_t StoredChunks() {
    auto storage = internal_client::StorageClient::Connect(server_->address());
    auto stat = (*storage)->Stat();
    EXPECT_TRUE(stat.ok()) << stat.status();
    return stat.ok() ? stat->chunks() : 0;
  }

  TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, EightRankThreadsSaveAndRestoreBitExactAcrossSteps) {
  constexpr int kWorld = 8, kSteps = 3;
  std::vector<std::thread> ranks;
  std::atomic<int> failures{0};
  for (int rank = 0; rank < kWorld; ++rank) {
    ranks.emplace_back([&, rank] {
      CheckpointerOptions o;
      o.chunk_bytes = 64 << 10;  // several chunks per tensor, uneven tails
      auto ck = NewCheckpointer("eight", rank, kWorld, 1, o);
      if (ck == nullptr) return ++failures, void();
      auto latest = ck->LatestStep();
      if (!latest.ok() || latest->has_value()) ++failures;  // fresh job
      for (int step = 1; step <= kSteps; ++step) {
        RankState state(rank, step);
        auto h = ck->Save(step * 10, state.tensors, state.blobs());
        if (!h.ok() || !h->Wait().ok()) {
          ADD_FAILURE() << "rank " << rank << " step " << step << ": "
                        << (h.ok() ? h->Wait() : h.status());
          ++failures;
        }
      }
      if (!ck->Close().ok()) ++failures;
    });
  }
  for (auto& t : ranks) t.join();
  ASSERT_EQ(failures.load(), 0);

  // Every rank restores the latest (step 30) and an older step, bit-exact.
  for (int rank = 0; rank < kWorld; ++rank) {
    auto ck = NewCheckpointer("eight", rank, kWorld, 2);
    auto latest = ck->LatestStep();
    ASSERT_TRUE(latest.ok() && latest->has_value());
    EXPECT_EQ(**latest, 30);
    auto r = ck->Restore();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->step, 30);
    ExpectRestored(*r, RankState(rank, 3));
    auto older = ck->Restore(20);
    ASSERT_TRUE(older.ok()) << older.status();
    ExpectRestored(*older, RankState(rank, 2));
  }
}

TEST_F(ClientTest, RestoreIntoCallerBuffersIsBitExactAndChecksTargetsFirst) {
  auto ck = NewCheckpointer("into", 0, 1);
  RankState saved(0, 1);
  auto h = ck->Save(1, saved.tensors, saved.blobs());
  ASSERT_TRUE(h.ok());
  ASSERT_OK(h->Wait());

  std::vector<std::string> memory;
  std::vector<MutableTensorView> targets;
  for (const TensorView& t : saved.tensors) memory.emplace_back(t.byte_length(), '\x7f');
  for (size_t i = 0; i < saved.tensors.size(); ++i) {
    const TensorView& t = saved.tensors[i];
    targets.push_back(
        {.name = t.name, .dtype = t.dtype, .shape = t.shape, .data = memory[i].data()});
  }
  // A wrong shape is refused before anything is written.
  std::vector<MutableTensorView> wrong = targets;
  wrong[0].shape = {77, 300};
  auto refused = ck->RestoreInto(wrong);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
      << refused.status();
  EXPECT_EQ(memory[1], std::string(memory[1].size(), '\x7f'))
      << "written before the check";
  // A missing target too.
  auto missing = ck->RestoreInto(absl::MakeConstSpan(targets).subspan(1));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);

  auto r = ck->RestoreInto(targets);
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < memory.size(); ++i) {
    EXPECT_TRUE(memory[i] == saved.bytes[i]) << saved.tensors[i].name;
    EXPECT_TRUE(r->tensors[i].bytes.empty());
  }
  ASSERT_EQ(r->blobs.size(), 1u);
  EXPECT_EQ(r->blobs[0].bytes, saved.blob);
}

TEST_F(ClientTest, CheckpointIsNotLatestUntilEveryRankCommits) {
  auto r0 = NewCheckpointer("partial", 0, 2);
  auto r1 = NewCheckpointer("partial", 1, 2);
  RankState s0(0, 1), s1(1, 1);
  auto h0 = r0->Save(5, s0.tensors, s0.blobs());
  ASSERT_TRUE(h0.ok());
  ASSERT_OK(h0->Wait());
  EXPECT_FALSE(h0->stats().checkpoint_committed);
  auto latest = r0->LatestStep();
  ASSERT_TRUE(latest.ok());
  EXPECT_FALSE(latest->has_value())
      << "latest is step " << **latest << " with one rank of two";
  EXPECT_EQ(r0->Restore().status().code(), absl::StatusCode::kNotFound);
  auto h1 = r1->Save(5, s1.tensors, s1.blobs());
  ASSERT_TRUE(h1.ok());
  ASSERT_OK(h1->Wait());
  EXPECT_TRUE(h1->stats().checkpoint_committed);
  latest = r0->LatestStep();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(**latest, 5);
}

TEST_F(ClientTest, TensorLargerThanAGibibyteWithUnevenTail) {
  CheckpointerOptions o;
  o.compress = false;  // incompressible anyway; keeps the test fast
  auto ck = NewCheckpointer("big", 0, 1, 1, o);
  const uint64_t n = (1ull << 30) + 4096 + 3;
  std::string big(n, '\0');
  std::mt19937_64 rng(42);
  for (uint64_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&big[i], &v, 8);
  }
  big[n - 1] = 'z';
  TensorView t{.name = "big", .dtype = DType::kUInt8, .shape = {static_cast<int64_t>(n)}};
  t.data = big.data();
  auto h = ck->Save(1, {t});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_OK(h->Wait());
  EXPECT_EQ(h->stats().logical_bytes, n);
  EXPECT_EQ(h->stats().chunks, (n + o.chunk_bytes - 1) / o.chunk_bytes);
  auto r = ck->Restore();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tensors.size(), 1u);
  ASSERT_EQ(r->tensors[0].bytes.size(), n);
  EXPECT_TRUE(std::memcmp(r->tensors[0].bytes.data(), big.data(), n) == 0);
}

TEST_F(ClientTest, IncrementalSaveSendsOnlyChangedChunks) {
  CheckpointerOptions o;
  o.chunk_bytes = 64 << 10;
  auto ck = NewCheckpointer("incr", 0, 1, 1, o);
  constexpr int kChunks = 100;
  std::string weights = MakeBytes(kChunks * o.chunk_bytes, 1);
  TensorView t{.name = "w",
               .dtype = DType::kUInt8,
               .shape = {static_cast<int64_t>(weights.size())}};
  t.data = weights.data();
  auto full = ck->Save(1, {t});
  ASSERT_TRUE(full.ok());
  ASSERT_OK(full->Wait());
  const SaveStats first = full->stats();
  EXPECT_EQ(first.chunks, static_cast<uint64_t>(kChunks));
  EXPECT_EQ(first.chunks_unchanged, 0u);

  // Change 10 % of the chunks.
  for (int c = 0; c < kChunks; c += 10) weights[c * o.chunk_bytes + 17] ^= 0x5a;
  auto incr = ck->Save(2, {t});
  ASSERT_TRUE(incr.ok());
  ASSERT_OK(incr->Wait());
  const SaveStats second = incr->stats();
  EXPECT_EQ(second.chunks_unchanged, static_cast<uint64_t>(kChunks - 10));
  EXPECT_LE(second.sent_bytes, first.sent_bytes * 0.12)
      << "sent " << second.sent_bytes << " of a full " << first.sent_bytes;

  // Nothing changed: nothing sent.
  auto same = ck->Save(3, {t});
  ASSERT_TRUE(same.ok());
  ASSERT_OK(same->Wait());
  EXPECT_EQ(same->stats().sent_bytes, 0u);

  auto r = ck->Restore();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tensors[0].bytes == weights);
}

TEST_F(ClientTest, IdenticalTensorsOnSeveralRanksAreStoredOnce) {
  constexpr int kWorld = 4;
  CheckpointerOptions o;
  o.chunk_bytes = 64 << 10;
  const std::string replica = MakeBytes(40 * o.chunk_bytes, 9);  // 40 chunks
  const uint64_t before = StoredChunks();
  std::vector<std::atomic<uint64_t>> sent(kWorld);
  auto rank_saves = [&](int rank) {
    auto ck = NewCheckpointer("ddp", rank, kWorld, 1, o);
    TensorView t{.name = "w",
                 .dtype = DType::kUInt8,
                 .shape = {static_cast<int64_t>(replica.size())}};
    t.data = replica.data();
    auto h = ck->Save(1, {t});
    ASSERT_TRUE(h.ok());
    ASSERT_OK(h->Wait());
    sent[rank] = h->stats().sent_bytes;
  };
  // Rank 0 first, then the other ranks together (racing each other).
  rank_saves(0);
  std::vector<std::thread> ranks;
  for (int rank = 1; rank < kWorld; ++rank) ranks.emplace_back(rank_saves, rank);
  for (auto& t : ranks) t.join();
  EXPECT_EQ(StoredChunks() - before, 40u);
  EXPECT_GE(sent[0].load(), replica.size());
  // Ranks that found the chunks already stored did not send them again.
  for (int rank = 1; rank < kWorld; ++rank) EXPECT_EQ(sent[rank].load(), 0u) << rank;
}

TEST_F(ClientTest, CompressesWhereItPaysAndSendsTheRestRaw) {
  CheckpointerOptions o;
  o.chunk_bytes = 1 << 20;
  auto ck = NewCheckpointer("codec", 0, 1, 1, o);
  // bf16 weights (the upper halves of normally distributed fp32) save ~30 %
  // with shuffle+zstd; random bytes save nothing.
  const std::string fp32 = MakeBytes(8 << 20, 1, /*float_like=*/true);
  std::string bf16(4 << 20, '\0');
  for (size_t j = 0; j < bf16.size() / 2; ++j) {
    bf16[2 * j] = fp32[4 * j + 2];
    bf16[2 * j + 1] = fp32[4 * j + 3];
  }
  const std::string noise = MakeBytes(4 << 20, 2);
  TensorView a{.name = "bf16",
               .dtype = DType::kBFloat16,
               .shape = {static_cast<int64_t>(bf16.size() / 2)}};
  a.data = bf16.data();
  TensorView b{.name = "noise",
               .dtype = DType::kUInt8,
               .shape = {static_cast<int64_t>(noise.size())}};
  b.data = noise.data();
  auto h = ck->Save(1, {a, b});
  ASSERT_TRUE(h.ok());
  ASSERT_OK(h->Wait());
  const SaveStats st = h->stats();
  EXPECT_EQ(st.new_bytes, bf16.size() + noise.size());
  // noise raw (4 MiB) + bf16 compressed to at most 80 %.
  EXPECT_GE(st.sent_bytes, noise.size());
  EXPECT_LE(st.sent_bytes, noise.size() + 0.8 * bf16.size()) << st.sent_bytes;
  auto r = ck->Restore();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tensors[0].bytes == bf16);
  EXPECT_TRUE(r->tensors[1].bytes == noise);
}

TEST_F(ClientTest, StaleIncarnationCannotCommit) {
  auto old_run = NewCheckpointer("fenced", 0, 1, 1);
  RankState s(0, 1);
  auto h = old_run->Save(1, s.tensors, s.blobs());
  ASSERT_TRUE(h.ok());
  ASSERT_OK(h->Wait());
  // The job restarts as incarnation 2; the old process is still alive.
  auto new_run = NewCheckpointer("fenced", 0, 1, 2);
  auto r = new_run->Restore();
  ASSERT_TRUE(r.ok()) << r.status();
  auto h2 = new_run->Save(2, s.tensors, s.blobs());
  ASSERT_TRUE(h2.ok());
  ASSERT_OK(h2->Wait());

  auto zombie = old_run->Save(3, s.tensors, s.blobs());
  ASSERT_TRUE(zombie.ok());
  absl::Status st = zombie->Wait();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  // The failure is also returned by the next Save().
  EXPECT_EQ(old_run->Save(4, s.tensors, s.blobs()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto latest = new_run->LatestStep();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(**latest, 2);
}

TEST_F(ClientTest, OverlapModeReturnsBeforeTheCopyAndNeverMixesSteps) {
  CheckpointerOptions o;
  o.overlap = true;
  o.chunk_bytes = 1 << 20;
  auto ck = NewCheckpointer("overlap", 0, 1, 1, o);
  std::string w = MakeBytes(64 << 20, 3);
  TensorView t{
      .name = "w", .dtype = DType::kUInt8, .shape = {static_cast<int64_t>(w.size())}};
  t.data = w.data();
  const std::string at_step1 = w;
  auto h = ck->Save(1, {t});
  ASSERT_TRUE(h.ok());
  // The caller must wait for the snapshot before mutating.
  ASSERT_OK(ck->WaitSnapshot());
  w[12345] ^= 1;  // "optimizer step"
  ASSERT_OK(h->Wait());
  // Save() returned before the 64 MiB copy was done.
  EXPECT_LT(h->stats().blocked, h->stats().snapshot);
  auto r = ck->Restore(1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tensors[0].bytes == at_step1);
}

TEST_F(ClientTest, BusyPolicySkipSaysItSkipped) {
  CheckpointerOptions o;
  o.busy_policy = BusyPolicy::kSkip;
  o.chunk_bytes = 1 << 20;
  auto ck = NewCheckpointer("skip", 0, 1, 1, o);
  std::string w = MakeBytes(128 << 20, 4);
  TensorView t{
      .name = "w", .dtype = DType::kUInt8, .shape = {static_cast<int64_t>(w.size())}};
  t.data = w.data();
  auto first = ck->Save(1, {t});
  ASSERT_TRUE(first.ok());
  // Saves while the first is uploading are skipped, and say so.
  int skipped = 0;
  for (int step = 2; step < 50 && !first->Done(); ++step) {
    auto h = ck->Save(step, {t});
    ASSERT_TRUE(h.ok()) << h.status();
    if (h->stats().skipped) {
      ++skipped;
      EXPECT_TRUE(h->Done());
      break;
    }
  }
  ASSERT_OK(first->Wait());
  EXPECT_EQ(skipped, 1) << "the first save finished before a second could be tried";
}

TEST_F(ClientTest, CorruptChunkOnTheOnlyNodeIsDataLossNotBadBytes) {
  CheckpointerOptions o;
  o.compress = false;
  auto ck = NewCheckpointer("corrupt", 0, 1, 1, o);
  std::string w = MakeBytes(3 << 20, 5);
  TensorView t{
      .name = "w", .dtype = DType::kUInt8, .shape = {static_cast<int64_t>(w.size())}};
  t.data = w.data();
  auto h = ck->Save(1, {t});
  ASSERT_TRUE(h.ok());
  ASSERT_OK(h->Wait());
  server_.reset();  // stop the node, damage its segment, start it again
  for (const auto& e :
       std::filesystem::directory_iterator(dir_.path() + "/node/segments")) {
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1 << 20);
    f.write("garbage!", 8);
  }
  server::ServerOptions so;
  so.data_dir = dir_.path() + "/node";
  so.listen = "127.0.0.1:0";
  auto restarted = server::Server::Start(so);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  server_ = *std::move(restarted);
  client_ = *Client::Connect({.endpoint = server_->address()});
  auto reader = NewCheckpointer("corrupt", 0, 1, 2, o);
  auto r = reader->Restore();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_NE(r.status().message().find("no good copy"), absl::string_view::npos)
      << r.status();
}

TEST_F(ClientTest, BadViewsAreRejectedUpFront) {
  auto ck = NewCheckpointer("bad", 0, 1);
  float x = 1;
  TensorView a{.name = "a", .dtype = DType::kFloat32, .shape = {1}};
  a.data = &x;
  TensorView dup = a;
  EXPECT_EQ(ck->Save(1, {a, dup}).status().code(), absl::StatusCode::kInvalidArgument);
  TensorView null_data{.name = "n", .dtype = DType::kFloat32, .shape = {4}};
  EXPECT_EQ(ck->Save(1, {null_data}).status().code(), absl::StatusCode::kInvalidArgument);
  TensorView bad_shard = a;
  bad_shard.global_shape = {1};
  bad_shard.global_offset = {1};
  EXPECT_EQ(ck->Save(1, {bad_shard}).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(ck->Save(1, {a}).ok());
  EXPECT_EQ(ck->Save(1, {a}).status().code(), absl::StatusCode::kInvalidArgument)
      << "a step that does not grow";
  EXPECT_EQ(client_->NewCheckpointer({.job_id = "bad", .rank = 3, .world_size = 2})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace snapback
