// Crash and I/O-error tests of the chunk store, through the fault-injecting
// file system: crash at every named point, lose unsynced data (with torn
// tails), reopen, and check that every acknowledged chunk reads back verified
// and no present chunk fails verification.
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "storage/chunk_store.h"
#include "storage/fault_injection_fs.h"
#include "testing/test_util.h"

namespace snapback::storage {
namespace {

using testing::MakeChunk;
using testing::TempDir;

const std::vector<std::string> kCrashPoints = {
    "segment.after_create", "put.after_write", "put.after_sync",
    "put.after_dir_sync",   "put.after_index", "compact.after_switch",
    "compact.after_unlink"};

std::shared_ptr<FileSystem> Posix(IoEngine engine) {
  auto fs = NewPosixFileSystem({.engine = engine});
  if (!fs.ok()) std::abort();
  return *fs;
}

ChunkStoreOptions SmallStore(std::shared_ptr<FileSystem> fs, bool direct) {
  ChunkStoreOptions o;
  o.fs = std::move(fs);
  o.direct_io = direct;
  o.segment_bytes = 256 << 10;
  o.background_compaction = false;
  o.compaction_bytes_per_sec = 0;
  o.compaction_live_fraction = 0.6;
  return o;
}

// Every acknowledged chunk is there and verifies; nothing present is corrupt;
// acknowledged deletes stay deleted.
void CheckStore(ChunkStore* store, const std::map<ChunkId, EncodedChunk>& acked,
                const std::set<ChunkId>& acked_deleted, const std::string& context) {
  std::string scratch;
  for (const auto& [id, want] : acked) {
    auto got = store->GetOne(id);
    ASSERT_TRUE(got.ok()) << context << ": acknowledged chunk " << id.ShortHex()
                          << " lost: " << got.status();
    ASSERT_EQ(got->data, want.data) << context;
    ASSERT_TRUE(VerifyChunk(*got, &scratch).ok()) << context;
  }
  for (const ChunkId& id : acked_deleted) {
    auto has = store->Has({id});
    ASSERT_TRUE(has.ok());
    ASSERT_FALSE((*has)[0]) << context << ": deleted chunk " << id.ShortHex()
                            << " is back";
  }
  ScrubResult scrub = store->Scrub();
  ASSERT_TRUE(scrub.bad.empty())
      << context << ": " << scrub.bad.size()
      << " present chunks fail verification, first: " << scrub.bad[0].second;
  ASSERT_GE(scrub.checked, acked.size()) << context;
}

TEST(ChunkStoreCrash, CrashAtEveryPointKeepsAcknowledgedChunks) {
  int iterations = 240;
  if (const char* env = std::getenv("SNAPBACK_CRASH_ITERATIONS"))
    iterations = std::atoi(env);
  uint64_t base_seed = std::random_device()();
  if (const char* env = std::getenv("SNAPBACK_CRASH_SEED"))
    base_seed = std::strtoull(env, nullptr, 10);
  std::printf(
      "crash test: %d iterations, base seed %llu (rerun with SNAPBACK_CRASH_SEED)\n",
      iterations, static_cast<unsigned long long>(base_seed));
  std::map<std::string, int> crashes_at;

  for (int iter = 0; iter < iterations; ++iter) {
    const uint64_t seed = base_seed + iter;
    std::mt19937_64 rng(seed);
    const std::string point = kCrashPoints[iter % kCrashPoints.size()];
    const bool torn = rng() % 2;
    const bool direct = rng() % 2;
    const IoEngine engine = rng() % 2 ? IoEngine::kIoUring : IoEngine::kPwrite;
    const std::string context = absl::StrCat("iteration ", iter, " seed ", seed,
                                             " point ", point, torn ? " torn" : "");
    SCOPED_TRACE(context);
    TempDir dir;
    auto fault = std::make_shared<FaultInjectionFileSystem>(Posix(engine));
    std::map<ChunkId, EncodedChunk> acked;
    std::set<ChunkId> acked_deleted;

    // Two crash/recover cycles per iteration: recovery must leave a store
    // that survives the next crash too.
    for (int cycle = 0; cycle < 2; ++cycle) {
      auto opened = ChunkStore::Open(dir.path(), SmallStore(fault, direct));
      ASSERT_TRUE(opened.ok()) << opened.status();
      std::unique_ptr<ChunkStore> store = *std::move(opened);
      CheckStore(store.get(), acked, acked_deleted, context);

      fault->CrashAt(point, 1 + static_cast<int>(rng() % 3));
      for (int op = 0; op < 60 && !fault->crashed(); ++op) {
        int kind = static_cast<int>(rng() % 10);
        if (kind < 6) {
          std::vector<EncodedChunk> batch;
          int n = 1 + static_cast<int>(rng() % 4);
          for (int i = 0; i < n; ++i) {
            size_t size = 1 + rng() % (48 << 10);
            batch.push_back(
                MakeChunk(size, rng(), rng() % 2,
                          {.codec = rng() % 2 ? Codec::kNone : Codec::kZstd}));
          }
          const bool ok = store->Put(batch).ok();
          for (auto& c : batch) {
            // An unacknowledged put may or may not have landed.
            acked_deleted.erase(c.id);
            if (ok) acked[c.id] = std::move(c);
          }
        } else if (kind < 9 && !acked.empty()) {
          std::vector<ChunkId> ids;
          for (const auto& [id, c] : acked) {
            if (rng() % 3 == 0) ids.push_back(id);
          }
          const bool ok = store->Delete(ids).ok();
          for (const ChunkId& id : ids) {
            // An unacknowledged delete may or may not have landed.
            acked.erase(id);
            if (ok) acked_deleted.insert(id);
          }
        } else {
          (void)store->CompactNow();
        }
      }
      if (fault->crashed()) ++crashes_at[point];
      fault->Crash();  // whatever happened, the process dies here
      store.reset();
      ASSERT_TRUE(fault->DropUnsyncedData(torn, &rng).ok());
    }
    auto reopened = ChunkStore::Open(dir.path(), SmallStore(fault, direct));
    ASSERT_TRUE(reopened.ok()) << reopened.status();
    CheckStore(reopened->get(), acked, acked_deleted, context);
    if (::testing::Test::HasFatalFailure()) {
      std::printf("FAILED at %s\n", context.c_str());
      return;
    }
  }
  for (const std::string& p : kCrashPoints) {
    std::printf("  crash point %-22s reached %d times\n", p.c_str(), crashes_at[p]);
    EXPECT_GT(crashes_at[p], 0) << "crash point " << p << " was never reached";
  }
}

struct ErrorCase {
  FsOp op;
  int err;
  const char* name;
};

class ChunkStoreIoError : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ChunkStoreIoError, NoAckNoCorruptionAndRetryWritesElsewhere) {
  const ErrorCase& ec = GetParam();
  TempDir dir;
  auto fault = std::make_shared<FaultInjectionFileSystem>(Posix(IoEngine::kAuto));
  auto store = *ChunkStore::Open(dir.path(), SmallStore(fault, true));
  std::map<ChunkId, EncodedChunk> acked;
  for (int i = 0; i < 10; ++i) {
    EncodedChunk c = MakeChunk(20000 + i, i);
    ASSERT_TRUE(store->Put({c}).ok());
    acked[c.id] = c;
  }
  const uint64_t segments_before = store->Stats().segments;
  fault->FailAt(ec.op, 1, ec.err);
  // Keep writing until the injected fault is hit (the op may need a new
  // segment, e.g. directory sync); each write either fails or is acked.
  EncodedChunk failed;
  bool hit = false;
  for (int i = 0; i < 40 && !hit; ++i) {
    EncodedChunk c = MakeChunk(30000 + i, 1000 + i);
    absl::Status s = store->Put({c});
    if (s.ok()) {
      acked[c.id] = c;
      continue;
    }
    hit = true;
    failed = c;
    if (ec.err == ENOSPC) {
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    }
    EXPECT_FALSE(*std::move(store->Has({c.id})).value().begin())
        << "failed put is indexed";
  }
  ASSERT_TRUE(hit) << "the injected fault was never reached";
  // Earlier data is intact.
  CheckStore(store.get(), acked, {}, ec.name);
  // A retry succeeds, in another segment: the failed one is never trusted.
  ASSERT_TRUE(store->Put({failed}).ok());
  acked[failed.id] = failed;
  EXPECT_GT(store->Stats().segments, segments_before);
  // And all of it survives a power cut.
  fault->Crash();
  store.reset();
  std::mt19937_64 rng(1);
  ASSERT_TRUE(fault->DropUnsyncedData(false, &rng).ok());
  auto reopened = ChunkStore::Open(dir.path(), SmallStore(fault, true));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  CheckStore(reopened->get(), acked, {}, ec.name);
}

INSTANTIATE_TEST_SUITE_P(AtEverySyncSite, ChunkStoreIoError,
                         ::testing::Values(ErrorCase{FsOp::kWrite, EIO, "WriteEIO"},
                                           ErrorCase{FsOp::kWrite, ENOSPC, "WriteENOSPC"},
                                           ErrorCase{FsOp::kSync, EIO, "SyncEIO"},
                                           ErrorCase{FsOp::kSync, ENOSPC, "SyncENOSPC"},
                                           ErrorCase{FsOp::kSyncDir, EIO, "SyncDirEIO"},
                                           ErrorCase{FsOp::kOpenCreate, ENOSPC,
                                                     "CreateENOSPC"}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ChunkStoreIndex, CorruptWalRefusesToOpenInsteadOfDroppingChunks) {
  TempDir dir;
  std::vector<EncodedChunk> chunks;
  {
    auto store = *ChunkStore::Open(dir.path(), SmallStore(Posix(IoEngine::kAuto), true));
    for (int i = 0; i < 200; ++i) {
      chunks.push_back(MakeChunk(100 + i, i));
      ASSERT_TRUE(store->Put({chunks.back()}).ok());  // one WAL record each
    }
  }
  std::string wal;
  uint64_t wal_size = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/index")) {
    if (e.path().extension() == ".log" && e.file_size() > wal_size) {
      wal = e.path();
      wal_size = e.file_size();
    }
  }
  ASSERT_FALSE(wal.empty()) << "no WAL file with the entries (were they flushed?)";
  {
    // Corrupt one record in the middle; the records after it are intact.
    std::fstream f(wal, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(wal_size / 2));
    const char junk[8] = {'\x5a', '\x5a', '\x5a', '\x5a', '\x5a', '\x5a', '\x5a', '\x5a'};
    f.write(junk, sizeof(junk));
  }
  auto store = ChunkStore::Open(dir.path(), SmallStore(Posix(IoEngine::kAuto), true));
  ASSERT_FALSE(store.ok()) << "opened with a corrupt WAL; chunks indexed: "
                           << (*store)->Stats().chunks << " of " << chunks.size();
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition)
      << store.status();
  EXPECT_NE(store.status().message().find("corrupt"), absl::string_view::npos);
}

TEST(ChunkStoreIndex, TornWalTailNeedsTheOperatorsWordThenKeepsEveryChunk) {
  TempDir dir;
  std::vector<EncodedChunk> chunks;
  {
    auto store = *ChunkStore::Open(dir.path(), SmallStore(Posix(IoEngine::kAuto), true));
    for (int i = 0; i < 20; ++i) {
      chunks.push_back(MakeChunk(100 + i, i));
      ASSERT_TRUE(store->Put({chunks.back()}).ok());
    }
  }
  std::string wal;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/index")) {
    if (e.path().extension() == ".log" && e.file_size() > 0) wal = e.path();
  }
  ASSERT_FALSE(wal.empty());
  // A half-written record at the end, as a crash mid-append leaves it.
  {
    std::ofstream f(wal, std::ios::app | std::ios::binary);
    const char partial[] = {'\x12', '\x34', '\x56', '\x78', '\x40', '\x00', '\x01'};
    f.write(partial, sizeof(partial));
  }
  auto strict = ChunkStore::Open(dir.path(), SmallStore(Posix(IoEngine::kAuto), true));
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(strict.status().message().find("drop-torn-tail"), absl::string_view::npos)
      << strict.status();
  ChunkStoreOptions o = SmallStore(Posix(IoEngine::kAuto), true);
  o.index_recovery = IndexRecovery::kDropTornTail;
  auto store = ChunkStore::Open(dir.path(), o);
  ASSERT_TRUE(store.ok()) << store.status();
  for (const auto& c : chunks) EXPECT_TRUE((*store)->GetOne(c.id).ok());
}

}  // namespace
}  // namespace snapback::storage
