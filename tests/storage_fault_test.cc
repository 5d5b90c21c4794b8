// snapback-server as a process against its own faults: a full data volume
// (a small tmpfs in a private mount namespace), SIGTERM and a restart on it,
// a truncated and a damaged segment, and the disk an idle server takes.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/codec.h"
#include "common/hash.h"
#include "gtest/gtest.h"
#include "snapback/v1/storage.grpc.pb.h"
#include "storage/chunk_store.h"
#include "storage/file_system.h"
#include "storage/record.h"
#include "testing/small_volume.h"
#include "testing/subprocess.h"
#include "testing/test_util.h"

namespace snapback {
namespace {

using testing::MakeChunk;
using testing::SmallVolume;
using testing::Subprocess;
using testing::TempDir;

// Before any thread exists: the server processes inherit the namespace.
const absl::Status kNamespace = testing::EnterPrivateMountNamespace();

constexpr uint64_t kMiB = 1 << 20;

// A snapback-server child (embedded: storage + coordinator on one data dir)
// and a stub of its storage service.
class Node {
 public:
  // Starts the server and waits for its "listening" line; nullptr (and a
  // test failure) when it does not come up.
  static std::unique_ptr<Node> Start(const std::string& data_dir,
                                     const std::string& ready_file,
                                     std::vector<std::string> flags = {}) {
    std::remove(ready_file.c_str());
    std::vector<std::string> argv = {Subprocess::BinPath("snapback-server"),
                                     "--data-dir",
                                     data_dir,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--ready-file",
                                     ready_file,
                                     "--gc-interval",
                                     "0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto node = std::unique_ptr<Node>(new Node());
    node->process_ = std::make_unique<Subprocess>(argv);
    if (!node->process_->WaitForLine("snapback-server listening", absl::Seconds(60))) {
      ADD_FAILURE() << "snapback-server did not start on " << data_dir << " (exit "
                    << node->process_->Wait(absl::Seconds(5)) << ")";
      return nullptr;
    }
    int port = 0;
    std::ifstream in(ready_file);
    if (!(in >> port) || port <= 0) {
      ADD_FAILURE() << "no port in " << ready_file;
      return nullptr;
    }
    node->stub_ = v1::StorageService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    return node;
  }

  // SIGTERM; the exit code (-1 when it does not exit in time).
  int Stop() {
    process_->Kill(SIGTERM);
    return process_->Wait(absl::Seconds(60));
  }

  grpc::Status Put(const EncodedChunk& c) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::PutChunksResponse response;
    auto writer = stub_->PutChunks(&ctx, &response);
    v1::PutChunksRequest frame;
    v1::ChunkHeader* h = frame.mutable_header();
    h->set_id(std::string(c.id.AsBytes()));
    h->set_codec(static_cast<uint32_t>(c.codec));
    h->set_element_size(c.element_size);
    h->set_raw_length(c.raw_length);
    h->set_encoded_length(static_cast<uint32_t>(c.data.size()));
    frame.set_data(c.data);
    writer->Write(frame);
    writer->WritesDone();
    return writer->Finish();
  }

  // One chunk: its encoded bytes, NOT_FOUND when the node says missing, or
  // the call's error.
  absl::StatusOr<std::string> Get(const ChunkId& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::GetChunksRequest request;
    request.add_ids(std::string(id.AsBytes()));
    auto reader = stub_->GetChunks(&ctx, request);
    v1::GetChunksResponse frame;
    std::string data;
    bool missing = false;
    while (reader->Read(&frame)) {
      if (frame.has_header() && frame.header().missing()) missing = true;
      data += frame.data();
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                          s.error_message());
    }
    if (missing) return absl::NotFoundError("missing");
    return data;
  }

  grpc::Status Delete(const std::vector<ChunkId>& ids) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::DeleteChunksRequest request;
    for (const ChunkId& id : ids) request.add_ids(std::string(id.AsBytes()));
    v1::DeleteChunksResponse response;
    return stub_->DeleteChunks(&ctx, request, &response);
  }

  v1::StatResponse Stat() {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::StatResponse response;
    grpc::Status s = stub_->Stat(&ctx, v1::StatRequest(), &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

 private:
  Node() = default;
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<v1::StorageService::Stub> stub_;
};

size_t SegmentCount(const std::string& data_dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(data_dir + "/segments")) {
    n += e.path().extension() == ".seg";
  }
  return n;
}

// Polls `done` every 50 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return true;
}

void ExpectAllReadBack(Node* node, const std::vector<EncodedChunk>& chunks) {
  for (const EncodedChunk& c : chunks) {
    auto got = node->Get(c.id);
    ASSERT_TRUE(got.ok()) << c.id.ShortHex() << ": " << got.status();
    ASSERT_EQ(*got, c.data) << c.id.ShortHex();
  }
}

TEST(StorageFault, FullVolumeRefusesDeletesGiveSpaceBackAndSigtermIsClean) {
  auto volume = SmallVolume::Mount(48 * kMiB);
  if (!volume.ok()) GTEST_SKIP() << "cannot mount a small volume: " << volume.status();
  TempDir tmp;  // the ready file lives off the full volume
  const std::string data = (*volume)->path() + "/data";
  const std::string ready = tmp.path() + "/ready";
  const std::vector<std::string> flags = {"--segment-mb",  "2", "--reserve-mb", "8",
                                          "--min-free-mb", "8"};
  auto node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr);

  // Fill it with chunks until it says no: before the file system is full.
  std::vector<EncodedChunk> chunks;
  grpc::Status refused;
  for (int i = 0; i < 400 && refused.ok(); ++i) {
    EncodedChunk c = MakeChunk(256 << 10, i);
    refused = node->Put(c);
    if (refused.ok()) chunks.push_back(std::move(c));
  }
  ASSERT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "is full"))
      << refused.error_message();
  EXPECT_GE((*volume)->FreeBytes(), 4 * kMiB) << "refused only at ENOSPC";
  EXPECT_GT(chunks.size(), 80u);
  v1::StatResponse full = node->Stat();
  EXPECT_TRUE(full.full());
  EXPECT_EQ(full.capacity_bytes(), 48 * kMiB);
  EXPECT_EQ(full.min_free_bytes(), 8 * kMiB);
  EXPECT_EQ(full.lost_chunks(), 0u);

  // Something else takes the rest of the volume; SIGTERM there is clean,
  // and the server starts again on the full volume and serves every chunk.
  (*volume)->FillUp("filler");
  EXPECT_EQ(node->Stop(), 0) << "unclean exit on a full volume";
  node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr) << "no restart on a full volume";
  ExpectAllReadBack(node.get(), chunks);

  // Deleting gives space back: the older half outright (whole segments),
  // two of three of the rest (compacted).
  std::vector<ChunkId> doomed;
  std::vector<EncodedChunk> kept;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i < chunks.size() / 2 || i % 3 != 0) {
      doomed.push_back(chunks[i].id);
    } else {
      kept.push_back(chunks[i]);
    }
  }
  // Free space counted with the reserve (which comes back once there is
  // room for it).
  auto free_and_reserve = [&] {
    return (*volume)->FreeBytes() + node->Stat().reserve_bytes();
  };
  const uint64_t free_before = free_and_reserve();
  const size_t segments_before = SegmentCount(data);
  grpc::Status deleted = node->Delete(doomed);
  ASSERT_TRUE(deleted.ok()) << deleted.error_message();
  const uint64_t doomed_bytes = doomed.size() * (256 << 10);
  EXPECT_TRUE(WaitFor(
      [&] {
        return free_and_reserve() >= free_before + doomed_bytes * 9 / 10 &&
               SegmentCount(data) < segments_before;
      },
      absl::Seconds(30)))
      << "free + reserve " << free_and_reserve() << " was " << free_before << ", "
      << doomed_bytes << " bytes deleted, " << SegmentCount(data) << " segments, were "
      << segments_before;
  // With the other writer gone too, the node takes chunks again and the
  // reserve is made again.
  std::filesystem::remove((*volume)->path() + "/filler");
  EXPECT_TRUE(WaitFor(
      [&] {
        v1::StatResponse s = node->Stat();
        return !s.full() && s.reserve_bytes() == 8 * kMiB;
      },
      absl::Seconds(30)))
      << node->Stat().DebugString();
  for (int i = 0; i < 4; ++i) {
    EncodedChunk c = MakeChunk(256 << 10, 1000 + i);
    ASSERT_TRUE(node->Put(c).ok());
    kept.push_back(std::move(c));
  }
  EXPECT_EQ(node->Stop(), 0);
  node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr);
  ExpectAllReadBack(node.get(), kept);
  for (const ChunkId& id : doomed) {
    EXPECT_EQ(node->Get(id).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(node->Stop(), 0);
}

TEST(StorageFault, SigtermOnAVolumeFullToTheLastByteIsClean) {
  // No watermark and no reserve, as before they existed: the chunks fill
  // the volume to ENOSPC. RocksDB's own logging then used to abort the
  // process at shutdown (an assertion after a failed LOG write).
  auto volume = SmallVolume::Mount(32 * kMiB);
  if (!volume.ok()) GTEST_SKIP() << "cannot mount a small volume: " << volume.status();
  TempDir tmp;
  const std::string data = (*volume)->path() + "/data";
  const std::string ready = tmp.path() + "/ready";
  const std::vector<std::string> flags = {"--segment-mb",  "2", "--reserve-mb", "0",
                                          "--min-free-mb", "0"};
  auto node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr);
  grpc::Status refused;
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 400 && refused.ok(); ++i) {
    EncodedChunk c = MakeChunk(256 << 10, i);
    refused = node->Put(c);
    if (refused.ok()) chunks.push_back(std::move(c));
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.error_message();
  (*volume)->FillUp("filler");
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(node->Put(MakeChunk(256 << 10, 500 + i)).ok());
  EXPECT_EQ(node->Stop(), 0) << "unclean exit on a full volume";
  // Without a reserve it may not open there, but then it says so and exits
  // 1 (RocksDB's failed writes used to end in an assertion, exit 134).
  {
    Subprocess again({Subprocess::BinPath("snapback-server"), "--data-dir", data,
                      "--listen", "127.0.0.1:0", "--gc-interval", "0", "--reserve-mb",
                      "0", "--min-free-mb", "0"});
    if (again.WaitForLine("snapback-server listening", absl::Seconds(60))) {
      again.Kill(SIGTERM);
      EXPECT_EQ(again.Wait(absl::Seconds(60)), 0) << "unclean exit on a full volume";
    } else {
      EXPECT_EQ(again.Wait(absl::Seconds(60)), 1) << "no clean refusal to start";
    }
  }
  // With some room again it starts and serves everything.
  std::filesystem::remove((*volume)->path() + "/filler");
  node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr);
  ExpectAllReadBack(node.get(), chunks);
  EXPECT_EQ(node->Stop(), 0);
}

struct RecordAt {
  uint64_t offset;
  ChunkId id;
};

// The records of a segment file, from their headers.
std::vector<RecordAt> RecordsOf(const std::string& path) {
  const std::string bytes = testing::Slurp(path);
  std::vector<RecordAt> out;
  for (uint64_t at = 0; at + storage::kRecordHeaderSize <= bytes.size();) {
    auto h = storage::DecodeRecordHeader(
        absl::string_view(bytes).substr(at, storage::kRecordHeaderSize));
    if (!h.ok()) {  // padding up to the next group
      at = storage::AlignUp(at + 1);
      continue;
    }
    out.push_back({at, h->id});
    at = storage::AlignUp(at + storage::kRecordHeaderSize + h->encoded_length,
                          storage::kRecordAlignment);
  }
  return out;
}

TEST(StorageFault, DamagedSegmentsAreQuarantinedAndTheRestIsServed) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  const std::string ready = tmp.path() + "/ready";
  const std::vector<std::string> flags = {"--segment-mb", "1"};
  auto node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr);
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 24; ++i) {
    chunks.push_back(MakeChunk(128 << 10, i));
    ASSERT_TRUE(node->Put(chunks.back()).ok());
  }
  ASSERT_EQ(node->Stop(), 0);

  // Cut the second segment in its third record; flip a byte of the second
  // record of the third segment.
  std::vector<std::string> segments;
  for (const auto& e : std::filesystem::directory_iterator(data + "/segments")) {
    if (e.path().extension() == ".seg") segments.push_back(e.path());
  }
  std::sort(segments.begin(), segments.end());
  ASSERT_GE(segments.size(), 3u);
  const std::vector<RecordAt> cut = RecordsOf(segments[1]);
  const std::vector<RecordAt> flipped = RecordsOf(segments[2]);
  ASSERT_GE(cut.size(), 3u);
  ASSERT_GE(flipped.size(), 2u);
  std::set<ChunkId> truncated;
  for (size_t i = 2; i < cut.size(); ++i) truncated.insert(cut[i].id);
  std::filesystem::resize_file(segments[1], cut[2].offset + 777);
  {
    std::fstream f(segments[2], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(flipped[1].offset + 4000));
    f.put('\x5a');
  }

  node = Node::Start(data, ready, flags);
  ASSERT_NE(node, nullptr) << "a damaged segment stops the server";
  EXPECT_EQ(node->Stat().lost_chunks(), truncated.size());
  std::set<ChunkId> lost = truncated;
  lost.insert(flipped[1].id);
  for (const EncodedChunk& c : chunks) {
    auto got = node->Get(c.id);
    if (truncated.contains(c.id)) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
    } else if (c.id == flipped[1].id) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
    } else {
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, c.data);
    }
  }
  EXPECT_EQ(node->Get(flipped[1].id).status().code(), absl::StatusCode::kNotFound)
      << "the damaged chunk is quarantined after the first read";
  EXPECT_EQ(node->Stat().lost_chunks(), lost.size());
  ASSERT_EQ(node->Stop(), 0);

  // What repair will be told: exactly the damaged chunks.
  storage::ChunkStoreOptions o;
  o.background_compaction = false;
  auto store = storage::ChunkStore::Open(data, o);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<ChunkId> reported = (*store)->LostChunks();
  EXPECT_EQ(std::set<ChunkId>(reported.begin(), reported.end()), lost);
}

TEST(StorageFault, AnIdleServerTakesLittleDisk) {
  TempDir tmp;
  const std::string data = tmp.path() + "/data";
  auto node = Node::Start(data, tmp.path() + "/ready", {"--reserve-mb", "0"});
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->Put(MakeChunk(4096, 1)).ok());
  // Like du -s: allocated blocks, so preallocation counts.
  uint64_t used = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(data)) {
    struct stat st;
    if (e.is_regular_file() && ::stat(e.path().c_str(), &st) == 0) {
      used += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  std::printf("an idle data dir (chunk index, metadata, one chunk) takes %.1f MiB\n",
              static_cast<double>(used) / kMiB);
  EXPECT_LE(used, 4 * kMiB) << "RocksDB preallocation is back?";
  EXPECT_EQ(node->Stop(), 0);
}

}  // namespace
}  // namespace snapback
