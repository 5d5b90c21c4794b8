// The chunk store on a small real volume (a tmpfs in a private mount
// namespace) and with damaged segments: refusing chunks before the volume is
// full, giving space back after deletes on a full volume, the reserve file,
// opening on a full volume, compaction that runs out of space, and
// quarantining what a truncated or missing segment lost.
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/rocksdb_util.h"
#include "gtest/gtest.h"
#include "storage/chunk_store.h"
#include "storage/fault_injection_fs.h"
#include "storage/record.h"
#include "testing/small_volume.h"
#include "testing/test_util.h"

namespace snapback::storage {
namespace {

using testing::MakeChunk;
using testing::SmallVolume;
using testing::TempDir;

// Before any thread exists, so every thread of the store sees the volumes.
const absl::Status kNamespace = testing::EnterPrivateMountNamespace();

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<SmallVolume> MountOrSkipReason(uint64_t bytes, std::string* reason) {
  auto volume = SmallVolume::Mount(bytes);
  if (!volume.ok()) {
    *reason = std::string(volume.status().message());
    return nullptr;
  }
  return *std::move(volume);
}

// Segment files of a store (name -> size).
std::map<std::string, uint64_t> SegmentFiles(const std::string& dir) {
  std::map<std::string, uint64_t> files;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/segments")) {
    if (e.path().extension() == ".seg") files[e.path().filename()] = e.file_size();
  }
  return files;
}

// Disk blocks (not sizes: preallocation counts) under `path`, like du.
uint64_t BlocksUsed(const std::string& path) {
  auto blocks = [](const std::string& file) -> uint64_t {
    struct stat st;
    return ::stat(file.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
  };
  if (!std::filesystem::is_directory(path)) return blocks(path);
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(path)) {
    if (e.is_regular_file()) total += blocks(e.path());
  }
  return total;
}

struct RecordAt {
  uint64_t offset;
  uint64_t size;
  ChunkId id;
};

// The records of a segment file, parsed from their headers.
std::vector<RecordAt> RecordsOf(const std::string& path) {
  const std::string bytes = testing::Slurp(path);
  std::vector<RecordAt> out;
  for (uint64_t at = 0; at + kRecordHeaderSize <= bytes.size();) {
    auto h = DecodeRecordHeader(absl::string_view(bytes).substr(at, kRecordHeaderSize));
    if (!h.ok()) {  // padding up to the next group
      at = AlignUp(at + 1);
      continue;
    }
    out.push_back({at, kRecordHeaderSize + h->encoded_length, h->id});
    at = AlignUp(at + kRecordHeaderSize + h->encoded_length, kRecordAlignment);
  }
  return out;
}

ChunkStoreOptions VolumeOptions(uint64_t reserve, uint64_t min_free) {
  ChunkStoreOptions o;
  o.segment_bytes = 1 * kMiB;
  o.background_compaction = false;
  o.compaction_bytes_per_sec = 0;
  o.reserve_bytes = reserve;
  o.min_free_bytes = min_free;
  return o;
}

TEST(ChunkStoreVolume, RefusesBeforeTheVolumeIsFullAndDeletesGiveSpaceBack) {
  std::string why;
  auto volume = MountOrSkipReason(32 * kMiB, &why);
  if (volume == nullptr) GTEST_SKIP() << "cannot mount a small volume: " << why;
  const std::string dir = volume->path() + "/data";
  auto opened = ChunkStore::Open(dir, VolumeOptions(4 * kMiB, 4 * kMiB));
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<ChunkStore> store = *std::move(opened);
  EXPECT_EQ(store->Stats().reserve_bytes, 4 * kMiB);
  EXPECT_TRUE(std::filesystem::exists(dir + "/space-reserve"));

  // Fill with chunks until the store says no.
  std::vector<EncodedChunk> stored;
  absl::Status refused;
  for (int i = 0; i < 1000 && refused.ok(); ++i) {
    EncodedChunk c = MakeChunk(64 << 10, i);
    refused = store->Put({c});
    if (refused.ok()) stored.push_back(std::move(c));
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "is full")) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "delete checkpoints")) << refused;
  // Refused before ENOSPC: the watermark's space is still free.
  const uint64_t free_when_full = volume->FreeBytes();
  EXPECT_GE(free_when_full, 2 * kMiB);
  EXPECT_GT(stored.size(), 200u);
  ChunkStoreStats full = store->Stats();
  EXPECT_TRUE(full.full);
  EXPECT_EQ(full.capacity_bytes, 32 * kMiB);
  EXPECT_EQ(full.min_free_bytes, 4 * kMiB);

  // Delete the older half outright (whole segments die) and two of every
  // three of the rest (segments a third live): both must give space back.
  std::vector<ChunkId> doomed;
  std::vector<EncodedChunk> kept;
  const size_t half = stored.size() / 2;
  for (size_t i = 0; i < stored.size(); ++i) {
    if (i < half || i % 3 != 0) {
      doomed.push_back(stored[i].id);
    } else {
      kept.push_back(stored[i]);
    }
  }
  auto deleted = store->Delete(doomed);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, static_cast<int>(doomed.size()));
  const size_t segments_before = SegmentFiles(dir).size();
  auto compacted = store->CompactNow();
  ASSERT_TRUE(compacted.ok()) << compacted.status();
  EXPECT_GT(*compacted, 0);
  EXPECT_LT(SegmentFiles(dir).size(), segments_before);
  const uint64_t doomed_bytes = doomed.size() * (64 << 10);
  EXPECT_GE(volume->FreeBytes(), free_when_full + doomed_bytes * 8 / 10)
      << "deleted " << doomed_bytes << " bytes";
  for (const auto& [name, size] : SegmentFiles(dir)) {
    EXPECT_GT(size, 0u) << "empty segment file " << name;
  }
  EXPECT_FALSE(store->Stats().full);
  EXPECT_EQ(store->Stats().reserve_bytes, 4 * kMiB) << "the reserve is back";
  for (int i = 0; i < 8; ++i) {
    EncodedChunk c = MakeChunk(64 << 10, 5000 + i);
    ASSERT_TRUE(store->Put({c}).ok());
    kept.push_back(std::move(c));
  }
  for (const EncodedChunk& c : kept) {
    auto got = store->GetOne(c.id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, c.data);
  }
  EXPECT_TRUE(store->TEST_CheckConsistency().ok());
}

TEST(ChunkStoreVolume, AVolumeFilledByOthersReleasesTheReserveAndStillOpens) {
  std::string why;
  auto volume = MountOrSkipReason(32 * kMiB, &why);
  if (volume == nullptr) GTEST_SKIP() << "cannot mount a small volume: " << why;
  const std::string dir = volume->path() + "/data";
  const ChunkStoreOptions options = VolumeOptions(8 * kMiB, 2 * kMiB);
  auto store = *ChunkStore::Open(dir, options);
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 40; ++i) {
    chunks.push_back(MakeChunk(64 << 10, i));
    ASSERT_TRUE(store->Put({chunks.back()}).ok());
  }
  ASSERT_EQ(store->Stats().reserve_bytes, 8 * kMiB);

  // Something else takes every free byte.
  EXPECT_GT(volume->FillUp("filler"), 0u);
  ASSERT_LT(volume->FreeBytes(), 64u << 10);
  // Deletes still work: the reserve goes before the index write needs room.
  std::vector<ChunkId> first_half;
  for (int i = 0; i < 20; ++i) first_half.push_back(chunks[i].id);
  auto deleted = store->Delete(first_half);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(store->Stats().reserve_bytes, 0u);
  EXPECT_FALSE(std::filesystem::exists(dir + "/space-reserve"));
  // The released reserve is not for new chunks.
  EXPECT_EQ(store->Put({MakeChunk(64 << 10, 999)}).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store->Stats().full);
  for (int i = 20; i < 40; ++i) EXPECT_TRUE(store->GetOne(chunks[i].id).ok());
  ASSERT_TRUE(store->CompactNow().ok());

  // Space comes back: the reserve is made again, chunks are taken again.
  std::filesystem::remove(volume->path() + "/filler");
  ASSERT_TRUE(store->CompactNow().ok());
  EXPECT_EQ(store->Stats().reserve_bytes, 8 * kMiB);
  EXPECT_TRUE(std::filesystem::exists(dir + "/space-reserve"));
  EXPECT_FALSE(store->Stats().full);
  EXPECT_TRUE(store->Put({MakeChunk(64 << 10, 999)}).ok());

  // Closed, the volume filled by others, opened again: the reserve makes
  // room for RocksDB to open (it writes a MANIFEST, a WAL, an SST).
  store.reset();
  volume->FillUp("filler");
  ASSERT_LT(volume->FreeBytes(), 64u << 10);
  auto reopened = ChunkStore::Open(dir, options);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  store = *std::move(reopened);
  EXPECT_EQ(store->Stats().reserve_bytes, 0u);
  for (int i = 20; i < 40; ++i) {
    auto got = store->GetOne(chunks[i].id);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->data, chunks[i].data);
  }
  ASSERT_TRUE(store->Delete({chunks[20].id}).ok());
  EXPECT_TRUE(store->TEST_CheckConsistency().ok());
}

TEST(ChunkStoreVolume, RocksDbWritesFailingOnAFullVolumeDoNotAbortTheProcess) {
  // Debian's RocksDB keeps its assertions; its LOG file writer asserts on
  // the next line logged after a failed write, and a failed write logs
  // several. The databases of a data dir therefore log through
  // SNAPBACK_LOG (ApplyCommonOptions), never to a LOG file.
  std::string why;
  auto volume = MountOrSkipReason(8 * kMiB, &why);
  if (volume == nullptr) GTEST_SKIP() << "cannot mount a small volume: " << why;
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  internal_rocksdb::ApplyCommonOptions(&options, "test");
  const std::string path = volume->path() + "/db";
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(options, path, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  volume->FillUp("filler");
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s;
  for (int i = 0; i < 2000 && s.ok(); ++i) {
    s = db->Put(wo, absl::StrCat("k", i), std::string(4000, 'v'));
  }
  EXPECT_TRUE(s.IsNoSpace() || s.IsIOError()) << s.ToString();
  EXPECT_FALSE(db->Put(wo, "again", "v").ok());
  (void)db->Close();  // reports the error; must not abort
  db.reset();
  std::filesystem::remove(volume->path() + "/filler");
  ASSERT_TRUE(rocksdb::DB::Open(options, path, &raw).ok());
  delete raw;
}

TEST(ChunkStoreSpace, CompactionOutOfSpaceLeavesNoEmptySegmentAndBacksOff) {
  TempDir dir;
  auto fault = std::make_shared<FaultInjectionFileSystem>(DefaultFileSystem());
  ChunkStoreOptions o;
  o.fs = fault;
  o.segment_bytes = 256 << 10;
  o.background_compaction = false;
  o.compaction_bytes_per_sec = 0;
  o.compaction_live_fraction = 0.6;
  o.compaction_interval = absl::Minutes(10);  // the back-off starts there
  o.reserve_bytes = 0;
  o.min_free_bytes = 0;
  auto store = *ChunkStore::Open(dir.path(), o);
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 30; ++i) {
    chunks.push_back(MakeChunk(20000 + i, i));
    ASSERT_TRUE(store->Put({chunks.back()}).ok());
  }
  std::vector<ChunkId> doomed;
  for (int i = 0; i < 30; ++i) {
    if (i % 3 != 0) doomed.push_back(chunks[i].id);
  }
  ASSERT_TRUE(store->Delete(doomed).ok());
  const auto files_before = SegmentFiles(dir.path());

  // The copy of the first segment runs out of space.
  fault->FailAt(FsOp::kWrite, 1, ENOSPC);
  auto pass = store->CompactNow();
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(SegmentFiles(dir.path()), files_before)
      << "a failed compaction left a segment file behind";
  // No spinning: the next passes do not try to copy again.
  const int writes = fault->Count(FsOp::kWrite);
  ASSERT_TRUE(store->CompactNow().ok());
  ASSERT_TRUE(store->CompactNow().ok());
  EXPECT_EQ(fault->Count(FsOp::kWrite), writes);
  // Dead segments still go during the back-off, without writing a byte.
  std::vector<ChunkId> rest;
  for (int i = 0; i < 30; i += 3) rest.push_back(chunks[i].id);
  ASSERT_TRUE(store->Delete(rest).ok());
  const int writes_after_delete = fault->Count(FsOp::kWrite);
  auto unlinked = store->CompactNow();
  ASSERT_TRUE(unlinked.ok()) << unlinked.status();
  EXPECT_EQ(*unlinked, static_cast<int>(files_before.size()));
  EXPECT_TRUE(SegmentFiles(dir.path()).empty());
  EXPECT_EQ(fault->Count(FsOp::kWrite), writes_after_delete);
  EXPECT_TRUE(store->TEST_CheckConsistency().ok());
}

TEST(ChunkStoreDamage, TruncatedAndMissingSegmentsAreQuarantinedAtOpen) {
  TempDir dir;
  ChunkStoreOptions o;
  o.segment_bytes = 256 << 10;
  o.background_compaction = false;
  o.reserve_bytes = 0;
  std::map<ChunkId, EncodedChunk> chunks;
  {
    auto store = *ChunkStore::Open(dir.path(), o);
    for (int i = 0; i < 24; ++i) {
      EncodedChunk c = MakeChunk(40000 + i, i);
      ASSERT_TRUE(store->Put({c}).ok());
      chunks[c.id] = c;
    }
  }
  auto files = SegmentFiles(dir.path());
  ASSERT_GE(files.size(), 4u);
  auto it = files.begin();
  const std::string cut = dir.path() + "/segments/" + (++it)->first;
  const std::string gone = dir.path() + "/segments/" + (++it)->first;
  std::vector<RecordAt> cut_records = RecordsOf(cut);
  std::vector<RecordAt> gone_records = RecordsOf(gone);
  ASSERT_GE(cut_records.size(), 3u);
  std::set<ChunkId> lost;
  for (size_t i = 2; i < cut_records.size(); ++i) lost.insert(cut_records[i].id);
  for (const RecordAt& r : gone_records) lost.insert(r.id);
  // Cut mid-record, at an odd byte; remove the other file.
  std::filesystem::resize_file(cut, cut_records[2].offset + 1001);
  std::filesystem::remove(gone);

  auto opened = ChunkStore::Open(dir.path(), o);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<ChunkStore> store = *std::move(opened);
  std::vector<ChunkId> lost_ids = store->LostChunks();
  EXPECT_EQ(std::set<ChunkId>(lost_ids.begin(), lost_ids.end()), lost);
  EXPECT_EQ(store->Stats().lost_chunks, lost.size());
  EXPECT_EQ(store->Stats().chunks, chunks.size() - lost.size());
  for (const auto& [id, c] : chunks) {
    auto got = store->GetOne(id);
    if (lost.contains(id)) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
    } else {
      ASSERT_TRUE(got.ok()) << got.status();  // also before the cut, O_DIRECT
      EXPECT_EQ(got->data, c.data);
    }
  }
  EXPECT_TRUE(store->Scrub().bad.empty());
  EXPECT_TRUE(store->TEST_CheckConsistency().ok());

  // The list survives a restart; a lost chunk put back is served again.
  store.reset();
  store = *ChunkStore::Open(dir.path(), o);
  lost_ids = store->LostChunks();
  EXPECT_EQ(std::set<ChunkId>(lost_ids.begin(), lost_ids.end()), lost);
  const EncodedChunk& again = chunks[*lost.begin()];
  ASSERT_TRUE(store->Put({again}).ok());
  EXPECT_EQ(store->GetOne(again.id)->data, again.data);
  EXPECT_EQ(store->LostChunks().size(), lost.size() - 1);
}

TEST(ChunkStoreDamage, ScrubQuarantinesAChunkThatDoesNotHashToItsId) {
  TempDir dir;
  ChunkStoreOptions o;
  o.background_compaction = false;
  o.verify_on_put = false;  // as in the server, which verifies before the store
  o.reserve_bytes = 0;
  auto store = *ChunkStore::Open(dir.path(), o);
  EncodedChunk wrong = MakeChunk(5000, 1);
  wrong.id.bytes[0] ^= 1;  // stored bytes fine, identity wrong
  EncodedChunk good = MakeChunk(5000, 2);
  ASSERT_TRUE(store->Put({wrong, good}).ok());
  ASSERT_TRUE(store->GetOne(wrong.id).ok()) << "the record's own checksum passes";
  ScrubResult scrub = store->ScrubChunks({wrong.id, good.id});
  EXPECT_EQ(scrub.checked, 2u);
  ASSERT_EQ(scrub.bad.size(), 1u);
  EXPECT_EQ(scrub.bad[0].first, wrong.id);
  EXPECT_EQ(store->LostChunks(), std::vector<ChunkId>{wrong.id});
  EXPECT_EQ(store->GetOne(wrong.id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->GetOne(good.id).ok());
  EXPECT_TRUE(store->TEST_CheckConsistency().ok());
}

TEST(ChunkStoreFootprint, AnIdleStoreHoldsLittleBesidesItsReserve) {
  TempDir dir;
  ChunkStoreOptions o;
  o.background_compaction = false;
  auto store = *ChunkStore::Open(dir.path(), o);
  ASSERT_TRUE(store->Put({MakeChunk(1000, 1)}).ok());
  // RocksDB used to preallocate ~70 MiB of WAL and 4 MiB of MANIFEST.
  EXPECT_LE(BlocksUsed(dir.path() + "/index"), 2 * kMiB);
  EXPECT_EQ(BlocksUsed(dir.path() + "/space-reserve"), 64 * kMiB);
  // 0 turns the reserve off (and removes one left from before).
  store.reset();
  o.reserve_bytes = 0;
  store = *ChunkStore::Open(dir.path(), o);
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/space-reserve"));
  EXPECT_EQ(store->Stats().reserve_bytes, 0u);
}

}  // namespace
}  // namespace snapback::storage
