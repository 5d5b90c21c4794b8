// Integration tests of the storage node over real gRPC: a Server started on
// 127.0.0.1:0 with a chunk store in a fresh temporary directory, driven by
// StorageClient and, for malformed input, by the raw generated stub.
#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/codec.h"
#include "common/hash.h"
#include "gtest/gtest.h"
#include "rpc/channel.h"
#include "rpc/storage_client.h"
#include "server/server.h"
#include "testing/server_fixture.h"
#include "testing/test_util.h"

namespace snapback::server {
namespace {

using internal_client::StorageClient;
using internal_client::StorageClientOptions;
using snapback::v1::PutChunksRequest;
using snapback::v1::PutChunksResponse;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

// Deterministic pseudo-random bytes: the AES-128-CTR keystream of a key made
// from `seed`. Runs at GB/s even in a Debug build, so 1 GiB of test data
// costs well under a second to make (and to make again for comparison).
std::string RandomBytes(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  unsigned char key[16] = {};
  std::memcpy(key, &seed, sizeof(seed));
  unsigned char iv[16] = {};
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex(ctx, EVP_aes_128_ctr(), nullptr, key, iv);
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  size_t done = 0;
  while (done < n) {
    const int len = static_cast<int>(std::min<size_t>(n - done, 1 << 30));
    int written = 0;
    EVP_EncryptUpdate(ctx, p + done, &written, p + done, len);
    done += len;
  }
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

EncodedChunk Encode(const std::string& raw, Codec codec = Codec::kNone,
                    int element_size = 1) {
  EncodeOptions options;
  options.codec = codec;
  options.element_size = element_size;
  options.min_saving = 0;  // keep the requested codec even when it gains little
  absl::StatusOr<EncodedChunk> chunk = EncodeChunk(raw, options);
  EXPECT_TRUE(chunk.ok()) << chunk.status();
  return *std::move(chunk);
}

std::string Decode(const EncodedChunk& chunk) {
  std::string raw(chunk.raw_length, '\0');
  absl::Status status = DecodeChunk(chunk, absl::MakeSpan(raw));
  EXPECT_TRUE(status.ok()) << status;
  return raw;
}

PutChunksRequest HeaderFrame(const std::string& id, uint32_t codec, uint32_t element_size,
                             uint32_t raw_length, uint32_t encoded_length,
                             std::string data) {
  PutChunksRequest frame;
  auto* h = frame.mutable_header();
  h->set_id(id);
  h->set_codec(codec);
  h->set_element_size(element_size);
  h->set_raw_length(raw_length);
  h->set_encoded_length(encoded_length);
  frame.set_data(std::move(data));
  return frame;
}

PutChunksRequest HeaderFrame(const EncodedChunk& c) {
  return HeaderFrame(std::string(c.id.AsBytes()), static_cast<uint32_t>(c.codec),
                     c.element_size, c.raw_length, static_cast<uint32_t>(c.data.size()),
                     c.data);
}

PutChunksRequest DataFrame(std::string data) {
  PutChunksRequest frame;
  frame.set_data(std::move(data));
  return frame;
}

class StorageServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_dir_ = tmp_.path() + "/data";
    ASSERT_OK(StartServer(Options()));
  }

  ServerOptions Options() { return testing::EmbeddedServerOptions(data_dir_); }

  absl::Status StartServer(ServerOptions options) {
    server_.reset();
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(std::move(options));
    if (!server.ok()) return server.status();
    server_ = *std::move(server);
    return absl::OkStatus();
  }

  std::string Endpoint() const { return absl::StrCat("127.0.0.1:", server_->port()); }

  std::unique_ptr<StorageClient> Client(StorageClientOptions options = {}) {
    absl::StatusOr<std::unique_ptr<StorageClient>> client =
        StorageClient::Connect(Endpoint(), std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Sends `frames` on one PutChunks stream through the raw stub and returns
  // the call's status. Write() failures are ignored on purpose: the server
  // may reject the stream before it has read every frame.
  grpc::Status PutFrames(const std::vector<PutChunksRequest>& frames,
                         PutChunksResponse* response = nullptr) {
    auto client = Client();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    PutChunksResponse unused;
    auto writer = client->stub()->PutChunks(&ctx, response ? response : &unused);
    for (const PutChunksRequest& frame : frames) {
      if (!writer->Write(frame)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  // The node stores no chunk at all (after a rejected stream).
  void ExpectStoreEmpty() {
    auto stat = Client()->Stat();
    ASSERT_TRUE(stat.ok()) << stat.status();
    EXPECT_EQ(stat->chunks(), 0u);
    EXPECT_EQ(stat->puts(), 0u);
  }

  void ExpectAbsent(const ChunkId& id) {
    auto has = Client()->Has({id});
    ASSERT_TRUE(has.ok()) << has.status();
    EXPECT_FALSE((*has)[0]);
  }

  testing::TempDir tmp_;
  std::string data_dir_;
  std::unique_ptr<Server> server_;
};

// (a) 1 GiB through the service on two concurrent streams and back.
TEST_F(StorageServiceTest, StreamsOneGiBAndReadsItBackExactly) {
  constexpr size_t kChunks = 256;
  constexpr size_t kChunkBytes = 4 << 20;
  constexpr size_t kGroup = 16;  // chunks per Put/Get call: 64 MiB in memory
  constexpr int kStreams = 2;
  std::vector<ChunkId> ids(kChunks);
  auto client = Client();

  auto for_groups = [&](auto fn) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kStreams; ++t) {
      threads.emplace_back([&, t] {
        for (size_t begin = t * kGroup; begin < kChunks; begin += kStreams * kGroup) {
          fn(begin, std::min(kChunks, begin + kGroup));
        }
      });
    }
    for (auto& thread : threads) thread.join();
  };

  absl::Time start = absl::Now();
  std::atomic<int> stored{0};
  for_groups([&](size_t begin, size_t end) {
    std::vector<EncodedChunk> group;
    for (size_t i = begin; i < end; ++i) {
      group.push_back(Encode(RandomBytes(kChunkBytes, i)));
      ids[i] = group.back().id;
    }
    std::vector<ChunkId> group_ids(ids.begin() + begin, ids.begin() + end);
    auto before = client->Has(group_ids);
    ASSERT_TRUE(before.ok()) << before.status();
    for (bool present : *before) EXPECT_FALSE(present);
    auto put = client->Put(group);
    ASSERT_TRUE(put.ok()) << put.status();
    EXPECT_EQ(put->stored, static_cast<int>(end - begin));
    EXPECT_EQ(put->bytes_sent, (end - begin) * kChunkBytes);
    stored += put->stored;
    auto after = client->Has(group_ids);
    ASSERT_TRUE(after.ok()) << after.status();
    for (bool present : *after) EXPECT_TRUE(present);
  });
  const absl::Duration write_time = absl::Now() - start;
  ASSERT_EQ(stored.load(), static_cast<int>(kChunks));

  auto stat = client->Stat();
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->chunks(), kChunks);
  EXPECT_EQ(stat->raw_bytes(), uint64_t{kChunks} * kChunkBytes);

  start = absl::Now();
  std::atomic<int> exact{0};
  for_groups([&](size_t begin, size_t end) {
    auto got = client->Get(std::vector<ChunkId>(ids.begin() + begin, ids.begin() + end));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), end - begin);
    for (size_t i = begin; i < end; ++i) {
      const EncodedChunk& chunk = (*got)[i - begin];
      EXPECT_EQ(chunk.id, ids[i]);
      if (chunk.data == RandomBytes(kChunkBytes, i)) ++exact;
    }
  });
  const absl::Duration read_time = absl::Now() - start;
  EXPECT_EQ(exact.load(), static_cast<int>(kChunks));
  std::printf("1 GiB: write %.0f MB/s (%.2f s), read+verify %.0f MB/s (%.2f s)\n",
              (1 << 30) / absl::ToDoubleSeconds(write_time) / 1e6,
              absl::ToDoubleSeconds(write_time),
              (1 << 30) / absl::ToDoubleSeconds(read_time) / 1e6,
              absl::ToDoubleSeconds(read_time));
}

// Chunks of every codec, a zero-length chunk and a chunk larger than one
// frame survive a round trip.
TEST_F(StorageServiceTest, RoundTripsEveryCodecAndMultiFrameChunks) {
  std::vector<std::string> raws = {RandomBytes(1 << 20, 1), std::string(3 << 20, 'z'),
                                   testing::MakeBytes(1 << 20, 3, /*float_like=*/true),
                                   std::string(),
                                   RandomBytes(9 << 20, 5)};  // 9 MiB: three 4 MiB frames
  std::vector<EncodedChunk> chunks = {Encode(raws[0]), Encode(raws[1], Codec::kZstd),
                                      Encode(raws[2], Codec::kShuffleZstd, 4),
                                      Encode(raws[3]), Encode(raws[4])};
  EXPECT_EQ(chunks[2].codec, Codec::kShuffleZstd);
  auto client = Client();
  auto put = client->Put(chunks);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored, 5);

  auto again = client->Put(chunks);  // content-addressed: nothing rewritten
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->stored, 0);
  EXPECT_EQ(again->already_present, 5);

  std::vector<ChunkId> ids;
  for (const auto& c : chunks) ids.push_back(c.id);
  ids.push_back(chunks[0].id);  // duplicates come back as often as named
  auto got = client->Get(ids);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const size_t source = i < raws.size() ? i : 0;
    EXPECT_EQ((*got)[i].codec, chunks[source].codec);
    EXPECT_EQ(Decode((*got)[i]), raws[source]) << "chunk " << i;
  }
}

// (b) Every malformed stream fails with a precise status and stores nothing.
TEST_F(StorageServiceTest, RejectsWrongHash) {
  EncodedChunk chunk = Encode(RandomBytes(4096, 1));
  chunk.id = Sha256(std::string("something else"));
  grpc::Status status = PutFrames({HeaderFrame(chunk)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
  EXPECT_NE(status.error_message().find("SHA-256"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
  ExpectAbsent(chunk.id);
}

TEST_F(StorageServiceTest, RejectsSlicesShorterThanEncodedLength) {
  EncodedChunk chunk = Encode(RandomBytes(8192, 2));
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_data()->resize(5000);  // stream ends 3192 bytes short
  grpc::Status status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("stream ended in the middle of chunk"),
            std::string::npos)
      << status.error_message();
  // A new header before the previous chunk is complete is just as wrong.
  EncodedChunk other = Encode(RandomBytes(100, 3));
  status = PutFrames({frame, HeaderFrame(other)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("new header"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
}

TEST_F(StorageServiceTest, RejectsSlicesLongerThanEncodedLength) {
  EncodedChunk chunk = Encode(RandomBytes(8192, 2));
  PutChunksRequest first = HeaderFrame(chunk);
  first.mutable_data()->resize(5000);
  // 5000 + 4000 > 8192: the second slice overruns the chunk.
  grpc::Status status = PutFrames({first, DataFrame(std::string(4000, 'x'))});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("more than encoded_length"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
  // A slice after a complete chunk has no chunk to belong to.
  status = PutFrames({HeaderFrame(chunk), DataFrame("x")});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("without a chunk in progress"), std::string::npos)
      << status.error_message();
}

TEST_F(StorageServiceTest, RejectsRawLengthMismatch) {
  // codec none: raw_length must equal the encoded length.
  EncodedChunk raw = Encode(RandomBytes(4096, 4));
  PutChunksRequest frame = HeaderFrame(raw);
  frame.mutable_header()->set_raw_length(4000);
  grpc::Status status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << status.error_message();
  EXPECT_NE(status.error_message().find("raw length"), std::string::npos)
      << status.error_message();
  // zstd: the frame decodes to a different length than the header claims.
  EncodedChunk zstd = Encode(std::string(1 << 16, 'a'), Codec::kZstd);
  frame = HeaderFrame(zstd);
  frame.mutable_header()->set_raw_length(1000);
  status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
  ExpectStoreEmpty();
  ExpectAbsent(zstd.id);
}

TEST_F(StorageServiceTest, RejectsUnknownCodecAndBadElementSize) {
  EncodedChunk chunk = Encode(RandomBytes(4096, 5));
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_header()->set_codec(7);
  grpc::Status status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("unknown codec 7"), std::string::npos)
      << status.error_message();
  frame = HeaderFrame(chunk);
  frame.mutable_header()->set_element_size(3);
  status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("element_size 3"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
}

TEST_F(StorageServiceTest, RejectsOversizedFrame) {
  // 5 MiB in one frame: above max_frame_bytes (4 MiB + slack). The service
  // refuses it (gRPC's own receive limit is higher on a server that also
  // runs the coordinator, whose manifests can be 64 MiB), with the same
  // code and wording gRPC would use.
  EncodedChunk chunk = Encode(RandomBytes(5 << 20, 6));
  grpc::Status status = PutFrames({HeaderFrame(chunk)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_NE(status.error_message().find("larger than max"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
  // Split into frames that fit, the same chunk is fine.
  auto put = Client()->Put({chunk});
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored, 1);
}

TEST_F(StorageServiceTest, RejectsChunkOverTheLimit) {
  // The header alone is refused: no 16 MiB + 1 buffer is ever allocated.
  const uint32_t too_big = (16u << 20) + 1;
  grpc::Status status = PutFrames({HeaderFrame(std::string(32, 'a'), 0, 1, too_big,
                                               too_big, std::string(1024, 'a'))});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("exceeds the chunk limit"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();
}

TEST_F(StorageServiceTest, RejectsZstdBombs) {
  const std::string zeros(64 << 20, '\0');
  const ChunkId claimed_id = Sha256(std::string(4096, '\0'));
  // A frame that says in its header that it inflates to 64 MiB.
  std::string bomb(ZSTD_compressBound(zeros.size()), '\0');
  bomb.resize(ZSTD_compress(bomb.data(), bomb.size(), zeros.data(), zeros.size(), 1));
  ASSERT_LT(bomb.size(), 64u << 10);
  // The same without a content size, so only decoding can find out.
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  std::string silent(ZSTD_compressBound(zeros.size()), '\0');
  silent.resize(
      ZSTD_compress2(cctx, silent.data(), silent.size(), zeros.data(), zeros.size()));
  ZSTD_freeCCtx(cctx);
  ASSERT_FALSE(ZSTD_isError(silent.size()));

  for (const std::string* payload : {&bomb, &silent}) {
    grpc::Status status =
        PutFrames({HeaderFrame(std::string(claimed_id.AsBytes()), 1, 1, 4096,
                               static_cast<uint32_t>(payload->size()), *payload)});
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
    EXPECT_NE(status.error_message().find("zstd"), std::string::npos)
        << status.error_message();
  }
  ExpectStoreEmpty();
  ExpectAbsent(claimed_id);
}

TEST_F(StorageServiceTest, RejectsMalformedIdsAndTooManyIds) {
  EncodedChunk chunk = Encode(RandomBytes(4096, 7));
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_header()->set_id(std::string(chunk.id.AsBytes()).substr(0, 31));
  grpc::Status status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("id is 31 bytes"), std::string::npos)
      << status.error_message();
  ExpectStoreEmpty();

  auto client = Client();
  snapback::v1::HasChunksRequest has;
  has.add_ids(std::string(33, 'x'));
  snapback::v1::HasChunksResponse has_response;
  grpc::ClientContext has_ctx;
  status = client->stub()->HasChunks(&has_ctx, has, &has_response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("ids[0]: id is 33 bytes"), std::string::npos)
      << status.error_message();

  snapback::v1::GetChunksRequest get;
  for (int i = 0; i < 4097; ++i) get.add_ids(std::string(chunk.id.AsBytes()));
  grpc::ClientContext get_ctx;
  auto reader = client->stub()->GetChunks(&get_ctx, get);
  snapback::v1::GetChunksResponse frame_out;
  EXPECT_FALSE(reader->Read(&frame_out));
  status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("limit is 4096"), std::string::npos)
      << status.error_message();
}

TEST_F(StorageServiceTest, RejectsFramingErrors) {
  grpc::Status status = PutFrames({DataFrame("orphan")});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("without a chunk in progress"), std::string::npos)
      << status.error_message();
  EncodedChunk chunk = Encode(RandomBytes(4096, 8));
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_header()->set_missing(true);
  status = PutFrames({frame});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << status.error_message();
  ExpectStoreEmpty();
}

TEST_F(StorageServiceTest, BadChunkAfterGoodOnesIsNeverStored) {
  EncodedChunk good = Encode(RandomBytes(4096, 9));
  EncodedChunk bad = Encode(RandomBytes(4096, 10));
  bad.data[0] ^= 1;
  grpc::Status status = PutFrames({HeaderFrame(good), HeaderFrame(bad)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
  EXPECT_NE(status.error_message().find("chunk 1"), std::string::npos)
      << status.error_message();
  // The good chunk may or may not be durable (a stream is not atomic); the
  // bad one never is.
  ExpectAbsent(bad.id);
}

// (c) Missing ids: a `missing` header frame per id; the stream goes on.
TEST_F(StorageServiceTest, GetOfMissingIdReportsItAndContinues) {
  EncodedChunk present = Encode(RandomBytes(4096, 11));
  const ChunkId absent = Sha256(std::string("never stored"));
  auto client = Client();
  ASSERT_TRUE(client->Put({present}).ok());

  snapback::v1::GetChunksRequest request;
  request.add_ids(std::string(absent.AsBytes()));
  request.add_ids(std::string(present.id.AsBytes()));
  grpc::ClientContext ctx;
  auto reader = client->stub()->GetChunks(&ctx, request);
  std::vector<snapback::v1::GetChunksResponse> frames;
  snapback::v1::GetChunksResponse frame;
  while (reader->Read(&frame)) frames.push_back(frame);
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_TRUE(frames[0].header().missing());
  EXPECT_EQ(frames[0].header().id(), absent.AsBytes());
  EXPECT_TRUE(frames[0].data().empty());
  EXPECT_FALSE(frames[1].header().missing());
  EXPECT_EQ(frames[1].data(), present.data);

  auto got = client->Get({absent, present.id});
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find(absent.ToHex()), std::string::npos)
      << got.status();
  auto each = client->GetEach({absent, present.id});
  ASSERT_TRUE(each.ok()) << each.status();
  EXPECT_EQ((*each)[0].status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*each)[1].ok());
  EXPECT_EQ((*each)[1]->data, present.data);
}

// (d) A deadline that passes mid-stream ends the call on both sides.
TEST_F(StorageServiceTest, DeadlineExpiringMidStreamIsHonoured) {
  auto client = Client();
  EncodedChunk chunk = Encode(RandomBytes(1 << 20, 12));
  grpc::ClientContext ctx;
  const absl::Time start = absl::Now();
  ctx.set_deadline(absl::ToChronoTime(start + absl::Milliseconds(500)));
  PutChunksResponse response;
  auto writer = client->stub()->PutChunks(&ctx, &response);
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_data()->resize(1024);  // the rest never comes
  ASSERT_TRUE(writer->Write(frame));
  // No WritesDone: the stream stays open until the deadline.
  grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // The server's reactor ends too (it does not wait for the missing bytes).
  EXPECT_TRUE(server_->TEST_service()->WaitIdle(absl::Now() + absl::Seconds(10)));
  ExpectStoreEmpty();

  // The client's own per-call deadline applies the same way.
  StorageClientOptions options;
  options.deadline = absl::Microseconds(1);
  auto hurried = Client(options);
  auto put = hurried->Put({chunk});
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded) << put.status();
}

TEST_F(StorageServiceTest, ShutdownEndsStalledStreams) {
  auto client = Client();
  EncodedChunk chunk = Encode(RandomBytes(1 << 20, 13));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  PutChunksResponse response;
  auto writer = client->stub()->PutChunks(&ctx, &response);
  PutChunksRequest frame = HeaderFrame(chunk);
  frame.mutable_data()->resize(1024);
  ASSERT_TRUE(writer->Write(frame));
  // Wait (on a condition, with a deadline) until the server has the call.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (server_->TEST_service()->TEST_ActiveCalls() == 0 && absl::Now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_EQ(server_->TEST_service()->TEST_ActiveCalls(), 1);
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(100));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(server_->TEST_service()->TEST_ActiveCalls(), 0);
  grpc::Status status = writer->Finish();
  EXPECT_FALSE(status.ok());
}

// (e) TLS and mTLS with certificates made by the openssl CLI at test time.
class StorageServiceTlsTest : public StorageServiceTest {
 protected:
  void SetUp() override {
    StorageServiceTest::SetUp();
    if (!testing::HaveOpenssl()) {
      GTEST_SKIP() << "openssl CLI not found; skipping TLS";
    }
    ASSERT_OK(testing::MakeSelfSignedCert(tmp_.path(), "server", "localhost"));
    ASSERT_OK(testing::MakeSelfSignedCert(tmp_.path(), "client", "snapback-test-client"));
  }
  std::string File(const std::string& name) { return tmp_.path() + "/" + name; }
};

TEST_F(StorageServiceTlsTest, TlsRoundTripAndPlaintextRefused) {
  ServerOptions options = Options();
  options.tls_cert_file = File("server.crt");
  options.tls_key_file = File("server.key");
  ASSERT_OK(StartServer(options));

  StorageClientOptions tls;
  tls.tls_root_ca_file = File("server.crt");
  auto client = Client(tls);
  EncodedChunk chunk = Encode(RandomBytes(1 << 20, 14));
  auto put = client->Put({chunk});
  ASSERT_TRUE(put.ok()) << put.status();
  auto got = client->Get({chunk.id});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0].data, chunk.data);

  StorageClientOptions plaintext;
  plaintext.deadline = absl::Seconds(10);
  auto stat = Client(plaintext)->Stat();
  EXPECT_EQ(stat.status().code(), absl::StatusCode::kUnavailable) << stat.status();
}

TEST_F(StorageServiceTlsTest, MutualTlsRequiresAClientCertificate) {
  ServerOptions options = Options();
  options.tls_cert_file = File("server.crt");
  options.tls_key_file = File("server.key");
  options.tls_client_ca_file = File("client.crt");
  ASSERT_OK(StartServer(options));

  StorageClientOptions anonymous;
  anonymous.tls_root_ca_file = File("server.crt");
  anonymous.deadline = absl::Seconds(10);
  auto refused = Client(anonymous)->Stat();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();

  StorageClientOptions with_cert = anonymous;
  with_cert.tls_client_cert_file = File("client.crt");
  with_cert.tls_client_key_file = File("client.key");
  auto stat = Client(with_cert)->Stat();
  ASSERT_TRUE(stat.ok()) << stat.status();
}

TEST(ServerStartTest, PlaintextOnlyOnLoopback) {
  testing::TempDir tmp;
  ServerOptions options;
  options.data_dir = tmp.path() + "/never-created";
  options.listen = "0.0.0.0:0";
  auto server = Server::Start(options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(server.status().message().find("--tls-cert"), std::string::npos)
      << server.status();
  // Refused before the store was opened: nothing touched on disk.
  EXPECT_FALSE(std::filesystem::exists(options.data_dir));

  options.role = "coordinator";
  options.listen = "127.0.0.1:0";
  options.node.coordinator = "127.0.0.1:1";  // --coordinator is for storage nodes
  EXPECT_EQ(Server::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.node.coordinator.clear();
  options.role = "storage";
  options.limits.max_chunk_bytes = kMaxChunkRawBytes + 1;
  EXPECT_EQ(Server::Start(options).status().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_TRUE(rpc::IsLoopbackListenAddress("127.0.0.1:7420"));
  EXPECT_TRUE(rpc::IsLoopbackListenAddress("127.1.2.3:0"));
  EXPECT_TRUE(rpc::IsLoopbackListenAddress("localhost:7420"));
  EXPECT_TRUE(rpc::IsLoopbackListenAddress("[::1]:7420"));
  EXPECT_TRUE(rpc::IsLoopbackListenAddress("unix:/tmp/snapback.sock"));
  EXPECT_FALSE(rpc::IsLoopbackListenAddress("0.0.0.0:7420"));
  EXPECT_FALSE(rpc::IsLoopbackListenAddress("[::]:7420"));
  EXPECT_FALSE(rpc::IsLoopbackListenAddress(":7420"));
  EXPECT_FALSE(rpc::IsLoopbackListenAddress("10.0.0.1:7420"));
  EXPECT_FALSE(rpc::IsLoopbackListenAddress("example.com:7420"));
}

// (f) Every acknowledged chunk survives a restart on the same data dir.
TEST_F(StorageServiceTest, RestartedServerServesAcknowledgedChunks) {
  std::vector<std::string> raws;
  std::vector<EncodedChunk> chunks;
  for (int i = 0; i < 32; ++i) {
    raws.push_back(i % 2 ? RandomBytes(1 << 20, 100 + i)
                         : testing::MakeBytes(1 << 20, 100 + i, true));
    chunks.push_back(i % 2 ? Encode(raws.back())
                           : Encode(raws.back(), Codec::kShuffleZstd, 4));
  }
  auto put = Client()->Put(chunks);
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->stored, 32);

  server_->Shutdown();
  server_.reset();
  ASSERT_OK(StartServer(Options()));

  std::vector<ChunkId> ids;
  for (const auto& c : chunks) ids.push_back(c.id);
  auto client = Client();
  auto has = client->Has(ids);
  ASSERT_TRUE(has.ok()) << has.status();
  for (bool present : *has) EXPECT_TRUE(present);
  auto got = client->Get(ids);
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(Decode((*got)[i]), raws[i]) << i;
  auto stat = client->Stat();
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->chunks(), 32u);
}

}  // namespace
}  // namespace snapback::server
