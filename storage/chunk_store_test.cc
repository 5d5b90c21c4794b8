#include "storage/chunk_store.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "snapback/log.h"
#include "testing/test_util.h"

namespace snapback::storage {
namespace {

using testing::DiskUsage;
using testing::MakeChunk;
using testing::TempDir;

struct IoParam {
  IoEngine engine;
  bool direct_io;
};

std::string Name(const ::testing::TestParamInfo<IoParam>& info) {
  return std::string(info.param.engine == IoEngine::kIoUring ? "IoUring" : "Pwrite") +
         (info.param.direct_io ? "Direct" : "Buffered");
}

class ChunkStoreTest : public ::testing::TestWithParam<IoParam> {
 protected:
  ChunkStoreOptions Options() {
    auto fs = NewPosixFileSystem({.engine = GetParam().engine});
    EXPECT_TRUE(fs.ok()) << fs.status();
    ChunkStoreOptions o;
    o.fs = *fs;
    o.direct_io = GetParam().direct_io;
    o.background_compaction = false;
    return o;
  }
  std::unique_ptr<ChunkStore> OpenStore(ChunkStoreOptions o) {
    auto store = ChunkStore::Open(dir_.path(), std::move(o));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }
  TempDir dir_;
};

TEST_P(ChunkStoreTest, UsesTheRequestedIoPath) {
  auto store = OpenStore(Options());
  ASSERT_TRUE(store->Put({MakeChunk(10000, 1)}).ok());
  std::string mode = store->Stats().io_mode;
  EXPECT_TRUE(absl::StartsWith(
      mode, GetParam().engine == IoEngine::kIoUring ? "io_uring" : "pwrite"))
      << mode;
  EXPECT_EQ(absl::StrContains(mode, "O_DIRECT"), GetParam().direct_io) << mode;
}

TEST_P(ChunkStoreTest, PutGetHasDelete) {
  auto store = OpenStore(Options());
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 20; ++i) {
    chunks.push_back(
        MakeChunk(1 + i * 7919, i, i % 2 == 0,
                  {.codec = i % 3 == 0 ? Codec::kNone : Codec::kShuffleZstd}));
  }
  PutResult r;
  ASSERT_TRUE(store->Put(chunks, &r).ok());
  EXPECT_EQ(r.stored, 20);
  EXPECT_EQ(r.already_present, 0);

  std::vector<ChunkId> ids;
  for (const auto& c : chunks) ids.push_back(c.id);
  auto got = store->Get(ids);
  for (size_t i = 0; i < chunks.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    EXPECT_EQ(got[i]->data, chunks[i].data);
    EXPECT_EQ(got[i]->codec, chunks[i].codec);
    EXPECT_EQ(got[i]->raw_length, chunks[i].raw_length);
    std::string scratch;
    EXPECT_TRUE(VerifyChunk(*got[i], &scratch).ok());
  }

  // Putting the same chunks again writes nothing.
  uint64_t file_bytes = store->Stats().file_bytes;
  ASSERT_TRUE(store->Put(chunks, &r).ok());
  EXPECT_EQ(r.stored, 0);
  EXPECT_EQ(r.already_present, 20);
  EXPECT_EQ(store->Stats().file_bytes, file_bytes);

  auto deleted = store->Delete({ids[0], ids[1], MakeChunk(5, 999).id});
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 2);
  auto has = store->Has(ids);
  ASSERT_TRUE(has.ok());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ((*has)[i], i >= 2) << i;
  EXPECT_TRUE(absl::IsNotFound(store->GetOne(ids[0]).status()));
  EXPECT_EQ(store->Stats().chunks, 18u);
}

TEST_P(ChunkStoreTest, RejectsChunksThatFailVerification) {
  auto store = OpenStore(Options());
  EncodedChunk bad = MakeChunk(4096, 1);
  bad.data[10] ^= 1;
  EXPECT_EQ(store->Put({MakeChunk(100, 2), bad}).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->Stats().chunks, 0u);
  EXPECT_EQ(store->Stats().file_bytes, 0u);
}

TEST_P(ChunkStoreTest, ConcurrentWritersAllLandAndGroupCommit) {
  auto store = OpenStore(Options());
  constexpr int kThreads = 8, kPerThread = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Every thread also writes chunk (i % 5) of a shared set: dedup under
        // concurrency.
        uint64_t seed = (i % 4 == 0) ? 100000 + i % 5 : t * 1000 + i;
        if (!store->Put({MakeChunk(1000 + (seed % 50000), seed)}).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ChunkStoreStats stats = store->Stats();
  // 8*30 distinct + 5 shared.
  EXPECT_EQ(stats.chunks, 8u * 30 + 5);
  EXPECT_LT(stats.group_commits, uint64_t{kThreads * kPerThread});
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      uint64_t seed = (i % 4 == 0) ? 100000 + i % 5 : t * 1000 + i;
      EncodedChunk want = MakeChunk(1000 + (seed % 50000), seed);
      auto got = store->GetOne(want.id);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->data, want.data);
    }
  }
}

TEST_P(ChunkStoreTest, ReopenKeepsEveryAcknowledgedChunk) {
  std::vector<EncodedChunk> chunks;
  {
    ChunkStoreOptions o = Options();
    o.segment_bytes = 1 << 20;  // several segments
    auto store = OpenStore(o);
    for (int i = 0; i < 30; ++i) {
      chunks.push_back(MakeChunk(100000 + i, i, true, {.codec = Codec::kShuffleZstd}));
      ASSERT_TRUE(store->Put({chunks.back()}).ok());
    }
    EXPECT_GT(store->Stats().segments, 1u);
  }
  auto store = OpenStore(Options());
  EXPECT_EQ(store->Stats().chunks, 30u);
  for (const auto& c : chunks) {
    auto got = store->GetOne(c.id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, c.data);
  }
  // New writes after a reopen go to a new segment and are readable too.
  EncodedChunk extra = MakeChunk(5000, 777);
  ASSERT_TRUE(store->Put({extra}).ok());
  EXPECT_TRUE(store->GetOne(extra.id).ok());
  EXPECT_TRUE(store->Scrub().bad.empty());
}

TEST_P(ChunkStoreTest, CompactionReturnsSpaceAndKeepsLiveChunks) {
  ChunkStoreOptions o = Options();
  o.segment_bytes = 4 << 20;
  o.compaction_bytes_per_sec = 0;  // unthrottled in this test
  auto store = OpenStore(o);
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 64; ++i) chunks.push_back(MakeChunk(256 << 10, i));
  for (size_t i = 0; i < chunks.size(); i += 4) {
    ASSERT_TRUE(store->Put(absl::MakeConstSpan(chunks).subspan(i, 4)).ok());
  }
  // Start a new segment so the last one is sealed and eligible too.
  ASSERT_TRUE(store->Put({MakeChunk(5 << 20, 1234)}).ok());
  const uint64_t before = DiskUsage(dir_.path() + "/segments");
  EXPECT_GE(before, 64u * (256 << 10) + (5 << 20));
  // Delete three of every four chunks.
  std::vector<ChunkId> doomed;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i % 4 != 0) doomed.push_back(chunks[i].id);
  }
  ASSERT_EQ(*store->Delete(doomed), 48);
  auto compacted = store->CompactNow();
  ASSERT_TRUE(compacted.ok()) << compacted.status();
  EXPECT_GE(*compacted, 3);
  const uint64_t after = DiskUsage(dir_.path() + "/segments");
  // 16 live chunks of 256 KiB + the 5 MiB one, plus headers and padding.
  EXPECT_LT(after, (16u * (256 << 10) + (5 << 20)) * 1.05)
      << "before " << before << " after " << after;
  for (size_t i = 0; i < chunks.size(); i += 4) {
    auto got = store->GetOne(chunks[i].id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, chunks[i].data);
  }
  EXPECT_TRUE(store->Scrub().bad.empty());
  EXPECT_EQ(store->Stats().compactions, static_cast<uint64_t>(*compacted));
}

TEST_P(ChunkStoreTest, BackgroundCompactionRunsAfterDeletes) {
  ChunkStoreOptions o = Options();
  o.segment_bytes = 2 << 20;
  o.background_compaction = true;
  o.compaction_interval = absl::Milliseconds(20);
  auto store = OpenStore(o);
  std::vector<ChunkId> ids;
  for (int i = 0; i < 16; ++i) {
    EncodedChunk c = MakeChunk(512 << 10, i);
    ids.push_back(c.id);
    ASSERT_TRUE(store->Put({c}).ok());
  }
  ASSERT_TRUE(store->Put({MakeChunk(3 << 20, 99)}).ok());  // seal the rest
  ASSERT_EQ(*store->Delete(ids), 16);
  // Wait on the condition (segment files gone), with a deadline.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  // (A compaction counts once its new segment is in; the old file's unlink
  // follows, so wait for the disk usage too.)
  while ((store->Stats().compactions < 4 ||
          DiskUsage(dir_.path() + "/segments") > (uint64_t{4} << 20)) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(store->Stats().compactions, 4u);
  EXPECT_LE(DiskUsage(dir_.path() + "/segments"), uint64_t{4} << 20);
}

// Flips one bit at byte `offset` of `path`.
void FlipByte(const std::string& path, long offset) {
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr) << path;
  std::fseek(f, offset, SEEK_SET);
  int b = std::fgetc(f);
  std::fseek(f, offset, SEEK_SET);
  std::fputc(b ^ 0x40, f);
  std::fclose(f);
}

TEST_P(ChunkStoreTest, ReadsAndScrubQuarantineCorruptionOnDisk) {
  auto store = OpenStore(Options());
  EncodedChunk read = MakeChunk(64 << 10, 5);
  EncodedChunk scrubbed = MakeChunk(64 << 10, 6);
  EncodedChunk good = MakeChunk(64 << 10, 7);
  ASSERT_TRUE(store->Put({read, scrubbed, good}).ok());
  store.reset();
  // Flip a byte in the middle of the first two records of the only segment.
  std::string seg;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path() + "/segments")) {
    seg = e.path();
  }
  FlipByte(seg, 10000);
  FlipByte(seg, (64 << 10) + 10000);
  store = OpenStore(Options());
  EXPECT_TRUE(store->LostChunks().empty());
  // A read finds one: DATA_LOSS for that reader, then the chunk is gone
  // from the index and listed as lost.
  EXPECT_EQ(store->GetOne(read.id).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->GetOne(read.id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->LostChunks(), std::vector<ChunkId>{read.id});
  // Scrub finds the other.
  ScrubResult scrub = store->Scrub();
  ASSERT_EQ(scrub.bad.size(), 1u);
  EXPECT_EQ(scrub.bad[0].first, scrubbed.id);
  EXPECT_EQ(scrub.bad[0].second.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(store->Scrub().bad.empty()) << "quarantined chunks are checked again";
  ScrubResult named = store->ScrubChunks({good.id, read.id});
  EXPECT_EQ(named.checked, 1u);
  EXPECT_TRUE(named.bad.empty());
  EXPECT_EQ(named.missing, std::vector<ChunkId>{read.id});
  // A delete leaves the list alone: repair decides what to forget.
  ASSERT_TRUE(store->Delete({scrubbed.id}).ok());
  std::vector<ChunkId> lost = {read.id, scrubbed.id};
  std::sort(lost.begin(), lost.end());
  EXPECT_EQ(store->LostChunks(), lost);
  EXPECT_EQ(store->Stats().lost_chunks, 2u);
  EXPECT_EQ(store->Stats().chunks, 1u);
  ASSERT_TRUE(store->TEST_CheckConsistency().ok());
  // The list survives a restart.
  store.reset();
  store = OpenStore(Options());
  EXPECT_EQ(store->LostChunks(), lost);
  // Putting a lost chunk back stores good bytes and takes it off the list;
  // ForgetLost takes off the rest.
  PutResult put;
  ASSERT_TRUE(store->Put({read}, &put).ok());
  EXPECT_EQ(put.stored, 1);
  auto back = store->GetOne(read.id);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->data, read.data);
  EXPECT_EQ(store->LostChunks(), std::vector<ChunkId>{scrubbed.id});
  ASSERT_TRUE(store->ForgetLost({scrubbed.id, good.id}).ok());
  EXPECT_TRUE(store->LostChunks().empty());
  store.reset();
  store = OpenStore(Options());
  EXPECT_TRUE(store->LostChunks().empty());
  EXPECT_TRUE(store->GetOne(good.id).ok());
  EXPECT_TRUE(store->Scrub().bad.empty());
}

TEST_P(ChunkStoreTest, CompactionSkipsASegmentItCannotReadAndSaysSo) {
  auto store = OpenStore(Options());
  EncodedChunk c = MakeChunk(64 << 10, 6);
  ASSERT_TRUE(store->Put({c}).ok());
  store.reset();
  std::string seg;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path() + "/segments")) {
    seg = e.path();
  }
  FlipByte(seg, 10000);  // inside the chunk's encoded bytes

  // After a reopen the segment is sealed; with a live fraction of 1 its
  // padding alone makes it a candidate.
  ChunkStoreOptions o = Options();
  o.compaction_live_fraction = 1.0;
  o.compaction_bytes_per_sec = 0;
  store = OpenStore(o);
  const LogLevel saved_level = GetLogLevel();
  SetLogLevel(LogLevel::kWarning);
  std::vector<std::string> warnings;
  absl::Mutex warnings_mu;
  SetLogSink([&](const LogMessage& m) {
    absl::MutexLock lock(&warnings_mu);
    warnings.push_back(std::string(m.text));
  });
  auto compacted = store->CompactNow();
  SetLogSink(nullptr);
  SetLogLevel(saved_level);

  // The pass goes on (OK, nothing compacted), the segment and its damaged
  // record stay for scrub to report, and the skip is logged.
  ASSERT_TRUE(compacted.ok()) << compacted.status();
  EXPECT_EQ(*compacted, 0);
  EXPECT_EQ(store->Stats().compactions, 0u);
  EXPECT_TRUE(std::filesystem::exists(seg));
  EXPECT_EQ(store->GetOne(c.id).status().code(), absl::StatusCode::kDataLoss);
  ASSERT_EQ(warnings.size(), 1u);
  const std::string segment_name = std::filesystem::path(seg).filename();
  EXPECT_TRUE(absl::StartsWith(
      warnings[0], absl::StrCat("compaction of segment ", segment_name, " in ",
                                dir_.path(), " skipped: DATA_LOSS: ")))
      << warnings[0];
}

TEST_P(ChunkStoreTest, AccountingHoldsUnderConcurrentPutsDeletesAndCompaction) {
  // Writers put and delete overlapping sets of chunks while compaction moves
  // records in the same writer queue, so one group commit can hold a put, a
  // delete and a move of the same chunk in any order. Afterwards the
  // in-memory accounting must equal what the index says, and every chunk the
  // index has must verify.
  ChunkStoreOptions o = Options();
  o.segment_bytes = 256 << 10;
  o.compaction_live_fraction = 0.9;
  o.compaction_bytes_per_sec = 0;
  auto store = OpenStore(o);
  constexpr int kThreads = 4, kOps = 150, kIds = 40;
  std::vector<EncodedChunk> pool;
  for (int i = 0; i < kIds; ++i) pool.push_back(MakeChunk(20000 + 997 * i, i));
  std::atomic<bool> done{false};
  std::thread compactor([&] {
    while (!done) (void)store->CompactNow();
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int op = 0; op < kOps; ++op) {
        const EncodedChunk& c = pool[rng() % kIds];
        if (rng() % 3 == 0) {
          EXPECT_TRUE(store->Delete({c.id}).ok());
        } else {
          EXPECT_TRUE(store->Put({c}).ok());
        }
      }
    });
  }
  for (auto& w : writers) w.join();
  done = true;
  compactor.join();
  ASSERT_TRUE(store->CompactNow().ok());
  absl::Status consistent = store->TEST_CheckConsistency();
  EXPECT_TRUE(consistent.ok()) << consistent;
  EXPECT_TRUE(store->Scrub().bad.empty());
}

INSTANTIATE_TEST_SUITE_P(IoPaths, ChunkStoreTest,
                         ::testing::Values(IoParam{IoEngine::kIoUring, true},
                                           IoParam{IoEngine::kIoUring, false},
                                           IoParam{IoEngine::kPwrite, true},
                                           IoParam{IoEngine::kPwrite, false}),
                         Name);

}  // namespace
}  // namespace snapback::storage
