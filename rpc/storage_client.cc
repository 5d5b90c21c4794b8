#include "rpc/storage_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "rpc/channel.h"
#include "rpc/grpc_status.h"

namespace snapback::internal_client {
namespace {

using snapback::v1::GetChunksRequest;
using snapback::v1::GetChunksResponse;
using snapback::v1::PutChunksRequest;
using snapback::v1::PutChunksResponse;

// The largest frame a well-behaved server sends is one slice of one chunk;
// anything bigger is refused before it is allocated.
// Also a ListCatalog page: up to 8 MiB of records plus one record of at
// most 64 MiB (storage/catalog.h).
constexpr int kMaxReceiveFrameBytes = static_cast<int>((64u << 20) + (9u << 20));

absl::Status Annotate(const absl::Status& status, absl::string_view where) {
  return absl::Status(status.code(), absl::StrCat(where, ": ", status.message()));
}

bool ValidElementSize(uint32_t n) { return n == 1 || n == 2 || n == 4 || n == 8; }

}  // namespace

absl::StatusOr<std::unique_ptr<StorageClient>> StorageClient::Connect(
    const std::string& endpoint, StorageClientOptions options) {
  if (endpoint.empty()) {
    return absl::InvalidArgumentError("empty endpoint; use HOST:PORT");
  }
  if (options.max_frame_bytes == 0 || options.max_frame_bytes > kMaxChunkRawBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_frame_bytes must be in 1..", kMaxChunkRawBytes));
  }
  if (options.max_batch_chunks < 1) {
    return absl::InvalidArgumentError("max_batch_chunks must be at least 1");
  }
  if (options.deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("deadline must be positive");
  }
  rpc::ChannelOptions channel_options;
  channel_options.tls_root_ca_file = options.tls_root_ca_file;
  channel_options.tls_client_cert_file = options.tls_client_cert_file;
  channel_options.tls_client_key_file = options.tls_client_key_file;
  channel_options.tls_server_name = options.tls_server_name;
  channel_options.max_receive_bytes = kMaxReceiveFrameBytes;
  channel_options.max_send_bytes = -1;
  SNAPBACK_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                            rpc::MakeChannel(endpoint, channel_options));
  return std::unique_ptr<StorageClient>(new StorageClient(
      endpoint, std::move(options), snapback::v1::StorageService::NewStub(channel)));
}

absl::StatusOr<PutSummary> StorageClient::Put(absl::Span<const EncodedChunk> chunks) {
  PutSummary summary;
  const size_t batch = static_cast<size_t>(options_.max_batch_chunks);
  for (size_t begin = 0; begin < chunks.size(); begin += batch) {
    SNAPBACK_RETURN_IF_ERROR(
        PutStream(chunks.subspan(begin, batch), &summary, nullptr, begin));
  }
  return summary;
}

absl::StatusOr<PutSummary> StorageClient::Put(absl::Span<const EncodedChunk> chunks,
                                              const ForwardPlan& plan) {
  if (plan.forward.size() != chunks.size()) {
    return absl::InvalidArgumentError("ForwardPlan needs one forward list per chunk");
  }
  PutSummary summary;
  const size_t batch = static_cast<size_t>(options_.max_batch_chunks);
  for (size_t begin = 0; begin < chunks.size(); begin += batch) {
    SNAPBACK_RETURN_IF_ERROR(
        PutStream(chunks.subspan(begin, batch), &summary, &plan, begin));
  }
  return summary;
}

absl::Status StorageClient::PutStream(absl::Span<const EncodedChunk> chunks,
                                      PutSummary* summary, const ForwardPlan* plan,
                                      size_t first) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
  PutChunksResponse response;
  std::unique_ptr<grpc::ClientWriter<PutChunksRequest>> writer =
      stub_->PutChunks(&ctx, &response);
  PutChunksRequest frame;
  uint64_t sent = 0;
  bool broken = false;
  bool first_frame = true;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const EncodedChunk& chunk = chunks[c];
    const size_t total = chunk.data.size();
    size_t offset = 0;
    do {
      frame.Clear();
      if (first_frame && plan != nullptr) {
        for (const std::string& peer : plan->peers) frame.add_peers(peer);
      }
      first_frame = false;
      if (offset == 0) {
        if (plan != nullptr && plan->copies > 0) {
          snapback::v1::ChunkHeader* header = frame.mutable_header();
          for (uint32_t f : plan->forward[first + c]) header->add_forward(f);
          header->set_copies(plan->copies);
        }
        snapback::v1::ChunkHeader* header = frame.mutable_header();
        header->set_id(std::string(chunk.id.AsBytes()));
        header->set_codec(static_cast<uint32_t>(chunk.codec));
        header->set_element_size(chunk.element_size);
        header->set_raw_length(chunk.raw_length);
        header->set_encoded_length(static_cast<uint32_t>(total));
      }
      const size_t n = std::min<size_t>(options_.max_frame_bytes, total - offset);
      frame.set_data(chunk.data.data() + offset, n);
      offset += n;
      // Write() fails only when the stream is already broken; Finish() below
      // says why (e.g. the server rejected an earlier chunk).
      if (!writer->Write(frame)) {
        broken = true;
        break;
      }
      sent += n;
    } while (offset < total);
    if (broken) break;
  }
  if (!broken) writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) {
    return Annotate(FromGrpcStatus(status), absl::StrCat("PutChunks to ", endpoint_));
  }
  summary->stored += static_cast<int>(response.stored());
  summary->already_present += static_cast<int>(response.already_present());
  summary->bytes_sent += sent;
  summary->bytes_written += response.bytes_written();
  summary->bytes_forwarded += response.bytes_forwarded();
  summary->forward_failovers += static_cast<int>(response.forward_failovers());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::StatusOr<EncodedChunk>>> StorageClient::GetEach(
    absl::Span<const ChunkId> ids) {
  std::vector<absl::StatusOr<EncodedChunk>> out;
  out.reserve(ids.size());
  const size_t batch = static_cast<size_t>(options_.max_batch_chunks);
  for (size_t begin = 0; begin < ids.size(); begin += batch) {
    SNAPBACK_RETURN_IF_ERROR(GetStream(ids.subspan(begin, batch), &out));
  }
  return out;
}

absl::StatusOr<std::vector<EncodedChunk>> StorageClient::Get(
    absl::Span<const ChunkId> ids) {
  SNAPBACK_ASSIGN_OR_RETURN(std::vector<absl::StatusOr<EncodedChunk>> each, GetEach(ids));
  std::vector<EncodedChunk> out;
  out.reserve(each.size());
  std::vector<std::string> missing;
  for (size_t i = 0; i < each.size(); ++i) {
    if (each[i].ok()) {
      out.push_back(std::move(*each[i]));
    } else {
      missing.push_back(ids[i].ToHex());
    }
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 4);
    return absl::NotFoundError(absl::StrCat(
        missing.size(), " of ", ids.size(), " chunks not found on ", endpoint_, ": ",
        absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
        missing.size() > shown ? ", ..." : "", "; read them from another replica"));
  }
  return out;
}

absl::Status StorageClient::GetStream(absl::Span<const ChunkId> ids,
                                      std::vector<absl::StatusOr<EncodedChunk>>* out) {
  GetChunksRequest request;
  for (const ChunkId& id : ids) request.add_ids(std::string(id.AsBytes()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
  std::unique_ptr<grpc::ClientReader<GetChunksResponse>> reader =
      stub_->GetChunks(&ctx, request);
  const std::string where = absl::StrCat("GetChunks from ", endpoint_);

  // A response that breaks the framing ends the call: cancel it so Finish()
  // does not wait for frames nobody will read.
  auto abandon = [&](absl::Status status) {
    ctx.TryCancel();
    reader->Finish();
    return Annotate(status, where);
  };

  GetChunksResponse frame;
  size_t next = 0;  // index into ids of the chunk being received
  bool assembling = false;
  EncodedChunk chunk;
  uint64_t expected = 0;
  std::string scratch;
  while (reader->Read(&frame)) {
    if (frame.has_header()) {
      const snapback::v1::ChunkHeader& h = frame.header();
      if (assembling) {
        return abandon(
            absl::InternalError("server started a chunk before ending the last"));
      }
      if (next >= ids.size()) {
        return abandon(absl::InternalError("server sent more chunks than requested"));
      }
      if (h.id() != ids[next].AsBytes()) {
        return abandon(absl::InternalError(
            absl::StrCat("server sent a chunk out of order for ", ids[next].ShortHex())));
      }
      if (h.missing()) {
        out->push_back(absl::NotFoundError(
            absl::StrCat("chunk ", ids[next].ToHex(), " not found on ", endpoint_)));
        ++next;
        continue;
      }
      if (!IsKnownCodec(h.codec()) || !ValidElementSize(h.element_size()) ||
          h.raw_length() > kMaxChunkRawBytes || h.encoded_length() > kMaxChunkRawBytes) {
        return abandon(absl::DataLossError(
            absl::StrCat("malformed header for chunk ", ids[next].ShortHex())));
      }
      chunk = EncodedChunk{};
      chunk.id = ids[next];
      chunk.codec = static_cast<Codec>(h.codec());
      chunk.element_size = static_cast<uint8_t>(h.element_size());
      chunk.raw_length = h.raw_length();
      expected = h.encoded_length();
      assembling = true;
    } else if (!assembling) {
      return abandon(absl::InternalError("continuation frame without a chunk header"));
    }
    std::string* slice = frame.mutable_data();
    if (chunk.data.size() + slice->size() > expected) {
      return abandon(absl::DataLossError(
          absl::StrCat("chunk ", chunk.id.ShortHex(),
                       ": more bytes than its encoded_length ", expected)));
    }
    if (chunk.data.empty() && slice->size() == expected) {
      chunk.data = std::move(*slice);
    } else {
      if (chunk.data.capacity() < expected) chunk.data.reserve(expected);
      chunk.data.append(*slice);
    }
    if (chunk.data.size() == expected) {
      if (options_.verify_reads) {
        absl::Status verified = VerifyChunk(chunk, &scratch);
        if (!verified.ok()) {
          return abandon(absl::DataLossError(
              absl::StrCat("chunk ", chunk.id.ToHex(), " failed verification (",
                           verified.message(), "); read it from another replica")));
        }
      }
      out->push_back(std::move(chunk));
      chunk = EncodedChunk{};
      assembling = false;
      ++next;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Annotate(FromGrpcStatus(status), where);
  if (assembling || next != ids.size()) {
    return Annotate(absl::InternalError(absl::StrCat("stream ended after ", next, " of ",
                                                     ids.size(), " chunks")),
                    where);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> StorageClient::Has(absl::Span<const ChunkId> ids) {
  std::vector<bool> present;
  present.reserve(ids.size());
  const size_t batch = static_cast<size_t>(options_.max_batch_chunks);
  for (size_t begin = 0; begin < ids.size(); begin += batch) {
    absl::Span<const ChunkId> part = ids.subspan(begin, batch);
    snapback::v1::HasChunksRequest request;
    for (const ChunkId& id : part) request.add_ids(std::string(id.AsBytes()));
    snapback::v1::HasChunksResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
    grpc::Status status = stub_->HasChunks(&ctx, request, &response);
    if (!status.ok()) {
      return Annotate(FromGrpcStatus(status), absl::StrCat("HasChunks on ", endpoint_));
    }
    if (static_cast<size_t>(response.present_size()) != part.size()) {
      return absl::InternalError(absl::StrCat("HasChunks on ", endpoint_, ": ",
                                              response.present_size(), " answers for ",
                                              part.size(), " ids"));
    }
    for (bool p : response.present()) present.push_back(p);
  }
  return present;
}

absl::StatusOr<int> StorageClient::Delete(absl::Span<const ChunkId> ids) {
  int deleted = 0;
  const size_t batch = static_cast<size_t>(options_.max_batch_chunks);
  for (size_t begin = 0; begin < ids.size(); begin += batch) {
    absl::Span<const ChunkId> part = ids.subspan(begin, batch);
    snapback::v1::DeleteChunksRequest request;
    for (const ChunkId& id : part) request.add_ids(std::string(id.AsBytes()));
    snapback::v1::DeleteChunksResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
    grpc::Status status = stub_->DeleteChunks(&ctx, request, &response);
    if (!status.ok()) {
      return Annotate(FromGrpcStatus(status),
                      absl::StrCat("DeleteChunks on ", endpoint_));
    }
    deleted += static_cast<int>(response.deleted());
  }
  return deleted;
}

absl::StatusOr<snapback::v1::StatResponse> StorageClient::Stat() {
  snapback::v1::StatResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
  grpc::Status status = stub_->Stat(&ctx, snapback::v1::StatRequest(), &response);
  if (!status.ok()) {
    return Annotate(FromGrpcStatus(status), absl::StrCat("Stat on ", endpoint_));
  }
  return response;
}

namespace {

// One unary call with a deadline, annotated with the endpoint on error.
template <typename Req, typename Resp, typename Method>
absl::StatusOr<Resp> Unary(snapback::v1::StorageService::Stub* stub, Method method,
                           const Req& request, absl::Duration deadline,
                           const std::string& what) {
  Resp response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::Status status = (stub->*method)(&ctx, request, &response);
  if (!status.ok()) return Annotate(FromGrpcStatus(status), what);
  return response;
}

}  // namespace

absl::StatusOr<snapback::v1::ReplicateChunksResponse> StorageClient::Replicate(
    absl::Span<const ChunkId> ids, const std::vector<std::string>& sources) {
  snapback::v1::ReplicateChunksRequest request;
  for (const ChunkId& id : ids) request.add_ids(std::string(id.AsBytes()));
  for (const std::string& s : sources) request.add_sources(s);
  return Unary<snapback::v1::ReplicateChunksRequest,
               snapback::v1::ReplicateChunksResponse>(
      stub_.get(), &snapback::v1::StorageService::Stub::ReplicateChunks, request,
      options_.deadline * 4, absl::StrCat("ReplicateChunks on ", endpoint_));
}

absl::StatusOr<snapback::v1::ListChunksResponse> StorageClient::List(
    const std::string& start_after, uint32_t limit) {
  snapback::v1::ListChunksRequest request;
  request.set_start_after(start_after);
  request.set_limit(limit);
  return Unary<snapback::v1::ListChunksRequest, snapback::v1::ListChunksResponse>(
      stub_.get(), &snapback::v1::StorageService::Stub::ListChunks, request,
      options_.deadline, absl::StrCat("ListChunks on ", endpoint_));
}

absl::StatusOr<snapback::v1::VerifyChunksResponse> StorageClient::Verify(
    absl::Span<const ChunkId> ids, absl::Duration deadline) {
  snapback::v1::VerifyChunksRequest request;
  for (const ChunkId& id : ids) request.add_ids(std::string(id.AsBytes()));
  return Unary<snapback::v1::VerifyChunksRequest, snapback::v1::VerifyChunksResponse>(
      stub_.get(), &snapback::v1::StorageService::Stub::VerifyChunks, request, deadline,
      absl::StrCat("VerifyChunks on ", endpoint_));
}

absl::Status StorageClient::PutCatalog(const std::string& key, const std::string& value) {
  snapback::v1::PutCatalogRequest request;
  request.set_key(key);
  request.set_value(value);
  return Unary<snapback::v1::PutCatalogRequest, snapback::v1::PutCatalogResponse>(
             stub_.get(), &snapback::v1::StorageService::Stub::PutCatalog, request,
             options_.deadline, absl::StrCat("PutCatalog on ", endpoint_))
      .status();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
StorageClient::ListCatalog(const std::string& prefix) {
  std::vector<std::pair<std::string, std::string>> out;
  snapback::v1::ListCatalogRequest request;
  request.set_prefix(prefix);
  for (;;) {
    SNAPBACK_ASSIGN_OR_RETURN(
        snapback::v1::ListCatalogResponse page,
        (Unary<snapback::v1::ListCatalogRequest, snapback::v1::ListCatalogResponse>(
            stub_.get(), &snapback::v1::StorageService::Stub::ListCatalog, request,
            options_.deadline, absl::StrCat("ListCatalog on ", endpoint_))));
    for (auto& e : *page.mutable_entries()) {
      out.emplace_back(std::move(*e.mutable_key()), std::move(*e.mutable_value()));
    }
    if (page.done() || page.entries_size() == 0) break;
    request.set_start_after(out.back().first);
  }
  return out;
}

absl::Status StorageClient::DeleteCatalog(const std::vector<std::string>& keys) {
  snapback::v1::DeleteCatalogRequest request;
  for (const std::string& k : keys) request.add_keys(k);
  return Unary<snapback::v1::DeleteCatalogRequest, snapback::v1::DeleteCatalogResponse>(
             stub_.get(), &snapback::v1::StorageService::Stub::DeleteCatalog, request,
             options_.deadline, absl::StrCat("DeleteCatalog on ", endpoint_))
      .status();
}

}  // namespace snapback::internal_client
