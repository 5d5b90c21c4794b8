// snapbackctl: the operator's command line over the coordinator's gRPC API.
//
//   snapbackctl [--endpoint HOST:PORT] [--json] COMMAND [ARGS]
//
//   jobs                       every job: world size, latest, target, state
//   checkpoints JOB            a job's checkpoints: step, state, size, age, pin,
//                              copies, damaged, last verified
//   show JOB STEP              one checkpoint: ranks, tensors, dtypes, shapes,
//                              chunks, damage
//   pin JOB STEP | unpin JOB STEP
//                              keep / release a checkpoint regardless of retention
//   delete JOB STEP --reason R delete a checkpoint (not the latest or a pinned one
//                              unless --force)
//   verify JOB [STEP]          read and verify every chunk of every rank (all
//                              committed checkpoints without STEP), with a progress
//                              bar; damaged checkpoints are marked
//   gc                         retention + garbage collection now
//   restore JOB --step N --reason R   forced restore: the job restarts from step N
//                                     (--keep-target keeps N as the target afterwards)
//   restart JOB --reason R            restart the job now from its latest checkpoint
//   incidents JOB                     the failure detector's incident log
//   nodes                             storage cluster: node states, space, replica state
//   audit                             every operator action: who, when, why, outcome
//   report JOB [--since D] [--html F] the recovery SLA report (docs/sla.md): Markdown,
//                                     JSON with --json, and an HTML page with --html
//
// Exit codes (docs/operators.md): 0 done; 1 the server refused or failed
// (the message says why and what to do); 2 bad command line; 3 the
// coordinator cannot be reached; 4 no such job, step or node; 5 verify found
// a damaged checkpoint.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/flags.h"
#include "google/protobuf/util/json_util.h"
#include "rpc/channel.h"
#include "snapback/v1/cluster.grpc.pb.h"
#include "snapback/v1/coordinator.grpc.pb.h"
#include "snapback/v1/detector.grpc.pb.h"
#include "tools/progress_bar.h"
#include "tools/snapbackctl_report.h"
#include "tools/verify_stream.h"

ABSL_FLAG(
    std::string, endpoint, "",
    "the coordinator, HOST:PORT (default: $SNAPBACK_ENDPOINT, else 127.0.0.1:7420)");
ABSL_FLAG(bool, json, false, "print JSON (one object per command) instead of tables");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the coordinator's certificate (TLS)");
ABSL_FLAG(std::string, reason, "",
          "why (required for restore, restart and delete; recorded for pin, unpin, gc "
          "and verify)");
ABSL_FLAG(int64_t, step, -1, "restore: the committed step to restore");
ABSL_FLAG(bool, force, false, "delete: also the latest committed or a pinned checkpoint");
ABSL_FLAG(bool, keep_target, false,
          "restore: keep the step as the restore target after the restart (default: "
          "cleared once the restart is ordered, so later checkpoints take over)");
ABSL_FLAG(std::string, html, "",
          "report: also write the self-contained HTML page to FILE");
ABSL_FLAG(
    absl::Duration, since, absl::ZeroDuration(),
    "report: only the last DURATION (e.g. 24h; default: since the job's first run)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30),
          "deadline of each call (verify: the longest silence between two progress "
          "messages)");

namespace {

namespace v1 = snapback::v1;

constexpr char kProgram[] = "snapbackctl";
constexpr char kUsage[] =
    "usage: snapbackctl [--endpoint HOST:PORT] [--json] COMMAND [ARGS]\n"
    "\n"
    "commands: jobs | checkpoints JOB | show JOB STEP | pin JOB STEP | unpin JOB STEP |\n"
    "          delete JOB STEP --reason R [--force] | gc |\n"
    "          restore JOB --step N --reason R [--keep-target] | restart JOB --reason R "
    "|\n"
    "          incidents JOB | nodes | audit | verify JOB [STEP] [--reason R] |\n"
    "          report JOB [--since 24h] [--html FILE]\n"
    "\n"
    "verify reads and verifies every chunk of every rank of the step (of every\n"
    "committed checkpoint without STEP), with a progress bar on stderr, prints a\n"
    "result per checkpoint (ok, repaired, DAMAGED) and marks damaged ones.\n"
    "report prints the job's recovery SLA report (incidents, MTTD/MTTR, lost work,\n"
    "goodput, durability lag, compliance; docs/sla.md) and writes it as HTML too.\n"
    "\n"
    "The operator's view of a snapback coordinator. Exit codes: 0 done, 1 refused or\n"
    "failed by the server, 2 bad command line, 3 coordinator unreachable, 4 not found,\n"
    "5 verify found a damaged checkpoint.";

enum Exit {
  kOk = 0,
  kFailed = 1,
  kBadUsage = 2,
  kUnreachable = 3,
  kNotFound = 4,
  kDamaged = 5
};

[[noreturn]] void Usage(const std::string& message) {
  snapback::ExitBadFlag(kProgram, message);
}

// One line on stderr saying what happened and what to do; the exit code by
// the status.
int Fail(const grpc::Status& s, const std::string& what) {
  std::string hint;
  int code = kFailed;
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      code = kUnreachable;
      hint = "; check --endpoint and that snapback-server runs there";
      break;
    case grpc::StatusCode::NOT_FOUND:
      code = kNotFound;
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      hint = "; this server does not serve that (a storage node? an older server?)";
      break;
    default:
      break;
  }
  std::fprintf(stderr, "%s: %s: %s%s\n", kProgram, what.c_str(),
               s.error_message().c_str(), hint.c_str());
  return code;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

void PrintJson(const google::protobuf::Message& m) { std::printf("%s", Json(m).c_str()); }

std::string Age(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const absl::Duration d = absl::Now() - absl::FromUnixMillis(unix_ms);
  if (d < absl::Minutes(2)) return absl::StrCat(absl::ToInt64Seconds(d), "s");
  if (d < absl::Hours(2)) return absl::StrCat(absl::ToInt64Minutes(d), "m");
  if (d < absl::Hours(48)) return absl::StrCat(absl::ToInt64Hours(d), "h");
  return absl::StrCat(absl::ToInt64Hours(d) / 24, "d");
}

std::string Mb(uint64_t bytes) {
  if (bytes >= 10'000'000'000ull) return absl::StrFormat("%.1f GB", bytes / 1e9);
  return absl::StrFormat("%.1f MB", bytes / 1e6);
}

int64_t ParseStep(const std::string& text) {
  int64_t step = -1;
  if (!absl::SimpleAtoi(text, &step) || step < 0) {
    Usage(absl::StrCat("step '", text, "' is not a step number (0 or more)"));
  }
  return step;
}

std::string RequireReason(const std::string& command) {
  const std::string reason = absl::GetFlag(FLAGS_reason);
  if (reason.empty()) {
    Usage(
        absl::StrCat(command, " needs --reason \"...\": it is recorded with the action"));
  }
  return reason;
}

class Ctl {
 public:
  explicit Ctl(std::shared_ptr<grpc::Channel> channel)
      : coordinator_(v1::CoordinatorService::NewStub(channel)),
        detector_(v1::DetectorService::NewStub(channel)),
        cluster_(v1::ClusterService::NewStub(channel)) {}

  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    return ctx;
  }

  int Jobs() {
    v1::ListJobsResponse resp;
    grpc::Status s = coordinator_->ListJobs(Ctx().get(), v1::ListJobsRequest(), &resp);
    if (!s.ok()) return Fail(s, "listing jobs");
    if (json_) {
      PrintJson(resp);
      return kOk;
    }
    std::printf("%-32s %6s %8s %8s %11s %10s\n", "JOB", "RANKS", "LATEST", "TARGET",
                "INCARNATION", "SCHEDULER");
    for (const v1::JobInfo& j : resp.jobs()) {
      std::printf(
          "%-32s %6d %8s %8s %11lld %10s\n", j.job_id().c_str(), j.world_size(),
          j.latest_committed() < 0 ? "-" : absl::StrCat(j.latest_committed()).c_str(),
          j.restore_target() < 0 ? "-" : absl::StrCat(j.restore_target()).c_str(),
          static_cast<long long>(j.incarnation()),
          j.scheduler().empty() ? "-" : j.scheduler().c_str());
    }
    return kOk;
  }

  int Checkpoints(const std::string& job) {
    v1::ListCheckpointsRequest req;
    req.set_job_id(job);
    v1::ListCheckpointsResponse resp;
    grpc::Status s = coordinator_->ListCheckpoints(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s, absl::StrCat("checkpoints of job ", job));
    if (json_) {
      PrintJson(resp);
      return kOk;
    }
    // LOGICAL: the tensors' bytes; NEW: what had to be sent (changed and not
    // on the tier yet); SENT: NEW encoded, as it went over the wire and is
    // stored, COPIES times.
    std::printf("%10s %-10s %10s %10s %10s %6s %7s %6s %7s %8s  %s\n", "STEP", "STATE",
                "LOGICAL", "NEW", "SENT", "AGE", "PINNED", "COPIES", "DAMAGED",
                "VERIFIED", "NOTE");
    for (const v1::CheckpointInfo& c : resp.checkpoints()) {
      std::printf(
          "%10lld %-10s %10s %10s %10s %6s %7s %6d %7s %8s  %s\n",
          static_cast<long long>(c.step()), v1::CheckpointState_Name(c.state()).c_str(),
          Mb(c.logical_bytes()).c_str(), Mb(c.new_bytes()).c_str(),
          Mb(c.sent_bytes()).c_str(),
          Age(c.state() == v1::COMMITTED ? c.committed_unix_ms() : c.created_unix_ms())
              .c_str(),
          c.pinned() ? "yes" : "", std::max(1, c.replication()),
          c.damaged() ? "DAMAGED" : "", Age(c.verified_unix_ms()).c_str(),
          c.damaged() ? c.damage_reason().c_str() : c.abort_reason().c_str());
    }
    return kOk;
  }

  int Show(const std::string& job, int64_t step) {
    v1::DescribeJobRequest dj;
    dj.set_job_id(job);
    v1::JobInfo info;
    grpc::Status s = coordinator_->DescribeJob(Ctx().get(), dj, &info);
    if (!s.ok()) return Fail(s, absl::StrCat("job ", job));
    v1::ListCheckpointsResponse out;  // JSON: the manifests follow
    std::vector<v1::GetManifestResponse> ranks;
    for (int r = 0; r < info.world_size(); ++r) {
      v1::GetManifestRequest req;
      req.set_job_id(job);
      req.set_step(step);
      req.set_rank(r);
      v1::GetManifestResponse resp;
      s = coordinator_->GetManifest(Ctx().get(), req, &resp);
      if (!s.ok())
        return Fail(s, absl::StrCat("checkpoint ", job, "@", step, " rank ", r));
      ranks.push_back(std::move(resp));
    }
    if (json_) {
      std::printf("[");
      for (size_t r = 0; r < ranks.size(); ++r) {
        std::printf("%s%s", r > 0 ? ",\n" : "\n", Json(ranks[r]).c_str());
      }
      std::printf("]\n");
      return kOk;
    }
    std::printf("checkpoint %s@%lld: %d rank(s)\n", job.c_str(),
                static_cast<long long>(step), info.world_size());
    v1::ListCheckpointsRequest lr;
    lr.set_job_id(job);
    v1::ListCheckpointsResponse list;
    s = coordinator_->ListCheckpoints(Ctx().get(), lr, &list);
    if (!s.ok()) return Fail(s, absl::StrCat("checkpoints of job ", job));
    for (const v1::CheckpointInfo& c : list.checkpoints()) {
      if (c.step() != step) continue;
      if (c.damaged()) {
        std::printf("  DAMAGED: %s\n", c.damage_reason().c_str());
      } else {
        std::printf("  verified: %s\n", c.verified_unix_ms() > 0
                                            ? absl::StrCat(Age(c.verified_unix_ms()),
                                                           " ago, every chunk good")
                                                  .c_str()
                                            : "never (snapbackctl verify JOB STEP)");
      }
    }
    for (size_t r = 0; r < ranks.size(); ++r) {
      const v1::RankManifest& m = ranks[r].manifest();
      uint64_t bytes = 0, chunks = 0;
      for (const auto& t : m.tensors())
        bytes += t.byte_length(), chunks += t.chunks_size();
      for (const auto& b : m.blobs()) bytes += b.byte_length(), chunks += b.chunks_size();
      std::printf("  rank %zu: %d tensor(s), %d blob(s), %s in %llu chunk(s)\n", r,
                  m.tensors_size(), m.blobs_size(), Mb(bytes).c_str(),
                  static_cast<unsigned long long>(chunks));
      for (const auto& t : m.tensors()) {
        std::printf("    %-40s %-9s [%s] of [%s] at [%s], %d chunk(s)\n",
                    t.name().c_str(), t.dtype().c_str(),
                    absl::StrJoin(t.shape(), ",").c_str(),
                    absl::StrJoin(t.global_shape(), ",").c_str(),
                    absl::StrJoin(t.global_offset(), ",").c_str(), t.chunks_size());
      }
      for (const auto& b : m.blobs()) {
        std::printf("    %-40s blob      %llu bytes, %d chunk(s)\n", b.name().c_str(),
                    static_cast<unsigned long long>(b.byte_length()), b.chunks_size());
      }
    }
    if (!ranks.empty() && !ranks[0].nodes().empty()) {
      std::vector<std::string> nodes;
      for (const auto& n : ranks[0].nodes()) nodes.push_back(n.node_id());
      std::printf("  chunks placed on nodes: %s (snapbackctl nodes)\n",
                  absl::StrJoin(nodes, ", ").c_str());
    }
    return kOk;
  }

  int Pin(const std::string& job, int64_t step, bool pin) {
    v1::PinCheckpointRequest req;
    req.set_job_id(job);
    req.set_step(step);
    req.set_reason(absl::GetFlag(FLAGS_reason));
    v1::CheckpointInfo resp;
    grpc::Status s = pin ? coordinator_->PinCheckpoint(Ctx().get(), req, &resp)
                         : coordinator_->UnpinCheckpoint(Ctx().get(), req, &resp);
    if (!s.ok())
      return Fail(s, absl::StrCat(pin ? "pinning " : "unpinning ", job, "@", step));
    if (json_) {
      PrintJson(resp);
    } else {
      std::printf("%s@%lld %s\n", job.c_str(), static_cast<long long>(step),
                  pin ? "pinned: kept regardless of retention" : "unpinned");
    }
    return kOk;
  }

  int Delete(const std::string& job, int64_t step) {
    const std::string reason = RequireReason("delete");
    const bool force = absl::GetFlag(FLAGS_force);
    v1::DescribeJobRequest dj;
    dj.set_job_id(job);
    v1::JobInfo info;
    grpc::Status s = coordinator_->DescribeJob(Ctx().get(), dj, &info);
    if (!s.ok()) return Fail(s, absl::StrCat("job ", job));
    if (info.latest_committed() == step && !force) {
      std::fprintf(
          stderr,
          "%s: %s@%lld is the job's latest committed checkpoint, the one a restart "
          "restores; pass --force to delete it anyway\n",
          kProgram, job.c_str(), static_cast<long long>(step));
      return kFailed;
    }
    v1::PinCheckpointRequest pin;
    pin.set_job_id(job);
    pin.set_step(step);
    pin.set_reason(absl::StrCat("delete --force: ", reason));
    if (force) {
      v1::CheckpointInfo unpinned;
      s = coordinator_->UnpinCheckpoint(Ctx().get(), pin, &unpinned);
      if (!s.ok()) return Fail(s, absl::StrCat("checkpoint ", job, "@", step));
    }
    v1::DeleteCheckpointRequest req;
    req.set_job_id(job);
    req.set_step(step);
    req.set_reason(reason);
    v1::DeleteCheckpointResponse resp;
    s = coordinator_->DeleteCheckpoint(Ctx().get(), req, &resp);
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && !force) {
        std::fprintf(stderr, "%s: deleting %s@%lld: %s (or pass --force)\n", kProgram,
                     job.c_str(), static_cast<long long>(step),
                     s.error_message().c_str());
        return kFailed;
      }
      return Fail(s, absl::StrCat("deleting ", job, "@", step));
    }
    if (!json_) {
      std::printf("%s@%lld deleted (reason: %s); its chunks go at the next gc\n",
                  job.c_str(), static_cast<long long>(step), reason.c_str());
    } else {
      std::printf("{\"deleted\": {\"job_id\": \"%s\", \"step\": %lld}}\n", job.c_str(),
                  static_cast<long long>(step));
    }
    return kOk;
  }

  int Gc() {
    v1::CollectGarbageResponse resp;
    v1::CollectGarbageRequest req;
    req.set_reason(absl::GetFlag(FLAGS_reason));
    grpc::Status s = coordinator_->CollectGarbage(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s, "garbage collection");
    if (json_) {
      PrintJson(resp);
    } else {
      std::printf(
          "gc: %u checkpoint(s) deleted by retention, %u aborted (lease expired), "
          "%llu chunk(s) deleted\n",
          resp.checkpoints_deleted(), resp.checkpoints_aborted(),
          static_cast<unsigned long long>(resp.chunks_deleted()));
    }
    return kOk;
  }

  int Restore(const std::string& job) {
    const std::string reason = RequireReason("restore");
    const int64_t step = absl::GetFlag(FLAGS_step);
    if (step < 0) Usage("restore needs --step N: the committed step to restore");
    v1::SetRestoreTargetRequest target;
    target.set_job_id(job);
    target.set_step(step);
    target.set_reason(reason);
    v1::JobInfo info;
    grpc::Status s = coordinator_->SetRestoreTarget(Ctx().get(), target, &info);
    if (!s.ok()) return Fail(s, absl::StrCat("setting the restore target of ", job));
    v1::RestartJobRequest restart;
    restart.set_job_id(job);
    restart.set_reason(reason);
    v1::JobHealth health;
    s = detector_->RestartJob(Ctx().get(), restart, &health);
    if (!s.ok()) {
      // Leave nothing half done: the target alone would surprise the next
      // restart.
      v1::DescribeJobRequest clear;
      clear.set_job_id(job);
      clear.set_reason("the restart was refused");
      v1::JobInfo cleared;
      (void)coordinator_->ClearRestoreTarget(Ctx().get(), clear, &cleared);
      return Fail(s, absl::StrCat("restarting ", job, " (restore target cleared again)"));
    }
    if (!json_) {
      std::printf("%s: restart ordered (incarnation %lld); its ranks restore step %lld\n",
                  job.c_str(), static_cast<long long>(health.incarnation()),
                  static_cast<long long>(step));
    } else {
      PrintJson(health);
    }
    if (!absl::GetFlag(FLAGS_keep_target)) {
      // The restarted ranks read the target when they restore; clear it once
      // they have (the operator incident records the restored step), so
      // that later checkpoints take over again.
      const absl::Time end = absl::Now() + absl::Minutes(10);
      for (bool restored = false; !restored;) {
        v1::ListIncidentsRequest lr;
        lr.set_job_id(job);
        v1::ListIncidentsResponse incidents;
        s = detector_->ListIncidents(Ctx().get(), lr, &incidents);
        if (s.ok()) {
          for (const v1::Incident& i : incidents.incidents()) {
            if (i.seq() >= health.incidents() - 1 && i.restored_unix_ms() > 0 &&
                i.new_incarnation() >= health.incarnation()) {
              restored = true;
            }
          }
        }
        if (restored) break;
        if (absl::Now() > end) {
          std::fprintf(
              stderr,
              "%s: %s did not restore within 10 minutes; the restore target stays "
              "at %lld (clear it with snapbackctl restore ... --keep-target, or "
              "ClearRestoreTarget)\n",
              kProgram, job.c_str(), static_cast<long long>(step));
          return kFailed;
        }
        absl::SleepFor(absl::Milliseconds(200));
      }
      v1::DescribeJobRequest clear;
      clear.set_job_id(job);
      clear.set_reason(absl::StrCat("the job restored step ", step));
      v1::JobInfo cleared;
      s = coordinator_->ClearRestoreTarget(Ctx().get(), clear, &cleared);
      if (!s.ok()) return Fail(s, "clearing the restore target");
      if (!json_) {
        std::printf("%s restored step %lld and runs again; restore target cleared\n",
                    job.c_str(), static_cast<long long>(step));
      }
    }
    return kOk;
  }

  int Restart(const std::string& job) {
    const std::string reason = RequireReason("restart");
    v1::RestartJobRequest req;
    req.set_job_id(job);
    req.set_reason(absl::StrCat("operator: ", reason));
    v1::JobHealth health;
    grpc::Status s = detector_->RestartJob(Ctx().get(), req, &health);
    if (!s.ok()) return Fail(s, absl::StrCat("restarting ", job));
    if (json_) {
      PrintJson(health);
    } else {
      std::printf("%s: restart ordered through %s (incarnation %lld)\n", job.c_str(),
                  health.scheduler().c_str(),
                  static_cast<long long>(health.incarnation()));
    }
    return kOk;
  }

  int Incidents(const std::string& job) {
    v1::ListIncidentsRequest req;
    req.set_job_id(job);
    v1::ListIncidentsResponse resp;
    grpc::Status s = detector_->ListIncidents(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s, absl::StrCat("incidents of ", job));
    if (json_) {
      PrintJson(resp);
      return kOk;
    }
    std::printf("%4s %-16s %5s %9s %9s %9s %s\n", "SEQ", "KIND", "RANK", "MTTD", "MTTR",
                "RESTORED", "REASON");
    auto span = [](int64_t from, int64_t to) -> std::string {
      if (from <= 0 || to <= 0) return "-";
      return absl::StrFormat("%.1fs", (to - from) / 1000.0);
    };
    for (const v1::Incident& i : resp.incidents()) {
      std::printf("%4lld %-16s %5d %9s %9s %9s %s\n", static_cast<long long>(i.seq()),
                  i.kind().c_str(), i.rank(),
                  span(i.last_healthy_unix_ms(), i.detected_unix_ms()).c_str(),
                  span(i.detected_unix_ms(), i.first_new_step_unix_ms()).c_str(),
                  i.restored_step() < 0 ? "-" : absl::StrCat(i.restored_step()).c_str(),
                  i.reason().c_str());
    }
    return kOk;
  }

  int AuditLog() {
    v1::ListAuditRequest req;
    v1::ListAuditResponse resp;
    grpc::Status s = coordinator_->ListAudit(Ctx().get(), req, &resp);
    if (!s.ok()) return Fail(s, "reading the audit log");
    if (json_) {
      PrintJson(resp);
      return kOk;
    }
    std::printf("%5s %-24s %-22s %-21s %-16s %6s %-20s %s\n", "SEQ", "WHEN (UTC)", "WHO",
                "ACTION", "JOB", "STEP", "REASON", "OUTCOME");
    for (const v1::AuditEntry& e : resp.entries()) {
      std::printf("%5lld %-24s %-22s %-21s %-16s %6s %-20s %s\n",
                  static_cast<long long>(e.seq()),
                  absl::FormatTime("%Y-%m-%d %H:%M:%E3S",
                                   absl::FromUnixMillis(e.unix_ms()), absl::UTCTimeZone())
                      .c_str(),
                  e.who().c_str(), e.action().c_str(),
                  e.job_id().empty() ? "-" : e.job_id().c_str(),
                  e.step() < 0 ? "-" : absl::StrCat(e.step()).c_str(),
                  e.reason().empty() ? "-" : e.reason().c_str(), e.outcome().c_str());
    }
    return kOk;
  }

  int Nodes() {
    v1::NodeMap map;
    grpc::Status s = cluster_->ListNodes(Ctx().get(), v1::ListNodesRequest(), &map);
    if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // The embedded server (or a fixed --storage-endpoints list): no map.
      if (json_) {
        std::printf("{\"node_map\": null}\n");
      } else {
        std::printf(
            "no storage cluster: this coordinator stores chunks itself or on a fixed "
            "--storage-endpoints list (docs/cluster.md)\n");
      }
      return kOk;
    }
    if (!s.ok()) return Fail(s, "listing storage nodes");
    v1::ReplicaState st;
    s = cluster_->GetReplicaState(Ctx().get(), v1::GetReplicaStateRequest(), &st);
    if (!s.ok()) return Fail(s, "replica state");
    if (json_) {
      std::printf("{\"node_map\": %s, \"replica_state\": %s}\n", Json(map).c_str(),
                  Json(st).c_str());
      return kOk;
    }
    std::map<std::string, const v1::NodeReplicaState*> held;
    for (const auto& n : st.nodes()) held[n.node_id()] = &n;
    std::printf("node map version %llu\n",
                static_cast<unsigned long long>(map.version()));
    std::printf("%-22s %-22s %-10s %-13s %10s %10s %8s %10s\n", "NODE", "ADDRESS",
                "DOMAIN", "STATE", "CAPACITY", "FREE", "CHUNKS", "HELD");
    for (const v1::NodeInfo& n : map.nodes()) {
      const v1::NodeReplicaState* h =
          held.count(n.node_id()) ? held[n.node_id()] : nullptr;
      std::string state = v1::NodeState_Name(n.state());
      if (n.full()) state += ",full";
      if (!n.reconciled() && n.state() == v1::NODE_UP) state += ",checking";
      std::printf("%-22s %-22s %-10s %-13s %10s %10s %8llu %10s\n", n.node_id().c_str(),
                  n.address().c_str(),
                  n.failure_domain().empty() ? "-" : n.failure_domain().c_str(),
                  state.c_str(), Mb(n.capacity_bytes()).c_str(),
                  Mb(n.free_bytes()).c_str(),
                  static_cast<unsigned long long>(h ? h->chunks() : 0),
                  Mb(h ? h->bytes() : 0).c_str());
    }
    std::printf(
        "committed: %llu chunks, %s; under-replicated: %llu chunks, %s; no live copy: "
        "%llu\n",
        static_cast<unsigned long long>(st.chunks()), Mb(st.bytes()).c_str(),
        static_cast<unsigned long long>(st.under_replicated_chunks()),
        Mb(st.under_replicated_bytes()).c_str(),
        static_cast<unsigned long long>(st.lost_chunks()));
    std::printf("repair: %llu copies, %s moved so far; %s/s; ETA %.0f s\n",
                static_cast<unsigned long long>(st.repaired_chunks()),
                Mb(st.repaired_bytes()).c_str(), Mb(st.repair_bytes_per_sec()).c_str(),
                st.eta_seconds());
    return kOk;
  }

  int Verify(const std::string& job, int64_t step) {
    v1::VerifyCheckpointRequest req;
    req.set_job_id(job);
    req.set_step(step);
    req.set_reason(absl::GetFlag(FLAGS_reason));
    const std::string what = step < 0 ? absl::StrCat("verifying job ", job)
                                      : absl::StrCat("verifying ", job, "@", step);
    snapback::tools::ProgressBar bar(stderr, isatty(fileno(stderr)) == 1);
    const absl::Duration idle = absl::GetFlag(FLAGS_timeout);
    snapback::tools::VerifyStreamResult got =
        snapback::tools::StreamVerify(coordinator_.get(), req, idle, &bar);
    const v1::VerifyProgress& final = got.final;
    if (got.silent) {
      std::fprintf(
          stderr,
          "%s: %s: no progress from the coordinator for %s (--timeout); check it "
          "and its storage nodes, or raise --timeout\n",
          kProgram, what.c_str(), absl::FormatDuration(idle).c_str());
      return kUnreachable;
    }
    if (!got.status.ok()) return Fail(got.status, what);
    if (!final.final())
      return Fail(
          grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended without a result"),
          what);
    if (json_) {
      PrintJson(final);
    } else {
      std::printf("%10s %8s %12s  %-10s %s\n", "STEP", "CHUNKS", "SIZE", "VERDICT",
                  "REASON");
    }
    std::vector<std::string> damaged, incomplete;
    for (const v1::CheckpointVerification& r : final.results()) {
      const char* verdict = "ok";
      if (r.verdict() == v1::VERIFY_REPAIRED) verdict = "repaired";
      if (r.verdict() == v1::VERIFY_DAMAGED) verdict = "DAMAGED";
      if (r.verdict() == v1::VERIFY_INCOMPLETE) verdict = "incomplete";
      if (r.verdict() == v1::VERIFY_DAMAGED) damaged.push_back(absl::StrCat(r.step()));
      if (r.verdict() == v1::VERIFY_INCOMPLETE)
        incomplete.push_back(absl::StrCat(r.step()));
      if (!json_) {
        std::printf("%10lld %8llu %12s  %-10s %s\n", static_cast<long long>(r.step()),
                    static_cast<unsigned long long>(r.chunks()), Mb(r.bytes()).c_str(),
                    verdict, r.reason().c_str());
      }
    }
    if (!json_) {
      std::printf("%d checkpoint(s), %llu distinct chunk(s), %s verified; %zu damaged\n",
                  final.results_size(),
                  static_cast<unsigned long long>(final.chunks_verified()),
                  Mb(final.bytes_verified()).c_str(), damaged.size());
    }
    if (!damaged.empty()) {
      std::fprintf(
          stderr,
          "%s: job %s: damaged checkpoint(s) at step %s: they cannot be restored "
          "as is (see the reasons above)\n",
          kProgram, job.c_str(), absl::StrJoin(damaged, ", ").c_str());
      return kDamaged;
    }
    if (!incomplete.empty()) {
      std::fprintf(stderr,
                   "%s: job %s: step %s could not be verified completely (storage nodes "
                   "did not answer); verify again once they are back\n",
                   kProgram, job.c_str(), absl::StrJoin(incomplete, ", ").c_str());
      return kFailed;
    }
    return kOk;
  }

  bool json_ = false;

 private:
  std::unique_ptr<v1::CoordinatorService::Stub> coordinator_;
  std::unique_ptr<v1::DetectorService::Stub> detector_;
  std::unique_ptr<v1::ClusterService::Stub> cluster_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args =
      snapback::ParseCommandLineOrExit(argc, argv, kProgram, kUsage, __FILE__,
                                       /*allow_positional=*/true)
          .args;
  if (args.empty()) Usage("name a command (jobs, checkpoints, show, ... ; see --help)");
  std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  if (endpoint.empty()) {
    const char* env = std::getenv("SNAPBACK_ENDPOINT");
    endpoint = env != nullptr && *env != '\0' ? env : "127.0.0.1:7420";
  }
  snapback::rpc::ChannelOptions co;
  co.tls_root_ca_file = absl::GetFlag(FLAGS_tls_ca);
  co.max_receive_bytes = 256 << 20;
  auto channel = snapback::rpc::MakeChannel(endpoint, co);
  if (!channel.ok()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, channel.status().ToString().c_str());
    return kBadUsage;
  }
  Ctl ctl(*channel);
  ctl.json_ = absl::GetFlag(FLAGS_json);
  const std::string& cmd = args[0];
  auto want = [&](size_t n, const char* shape) {
    if (args.size() != n + 1) Usage(absl::StrCat("usage: snapbackctl ", cmd, " ", shape));
  };
  if (cmd == "jobs") {
    want(0, "");
    return ctl.Jobs();
  }
  if (cmd == "checkpoints") {
    want(1, "JOB");
    return ctl.Checkpoints(args[1]);
  }
  if (cmd == "show") {
    want(2, "JOB STEP");
    return ctl.Show(args[1], ParseStep(args[2]));
  }
  if (cmd == "pin" || cmd == "unpin") {
    want(2, "JOB STEP");
    return ctl.Pin(args[1], ParseStep(args[2]), cmd == "pin");
  }
  if (cmd == "delete") {
    want(2, "JOB STEP --reason R [--force]");
    return ctl.Delete(args[1], ParseStep(args[2]));
  }
  if (cmd == "gc") {
    want(0, "");
    return ctl.Gc();
  }
  if (cmd == "restore") {
    want(1, "JOB --step N --reason R [--keep-target]");
    return ctl.Restore(args[1]);
  }
  if (cmd == "restart") {
    want(1, "JOB --reason R");
    return ctl.Restart(args[1]);
  }
  if (cmd == "incidents") {
    want(1, "JOB");
    return ctl.Incidents(args[1]);
  }
  if (cmd == "nodes") {
    want(0, "");
    return ctl.Nodes();
  }
  if (cmd == "audit") {
    want(0, "");
    return ctl.AuditLog();
  }
  if (cmd == "verify") {
    if (args.size() != 2 && args.size() != 3) {
      Usage("usage: snapbackctl verify JOB [STEP] [--reason R]");
    }
    return ctl.Verify(args[1], args.size() == 3 ? ParseStep(args[2]) : -1);
  }
  if (cmd == "report") {
    want(1, "JOB [--since 24h] [--json] [--html FILE]");
    snapback::ctl::ReportCommand rc{.job = args[1],
                                    .since = absl::GetFlag(FLAGS_since),
                                    .json = ctl.json_,
                                    .html_path = absl::GetFlag(FLAGS_html),
                                    .timeout = absl::GetFlag(FLAGS_timeout)};
    if (rc.since < absl::ZeroDuration())
      Usage("--since must be a positive duration, e.g. 24h");
    return snapback::ctl::RunReport(*channel, rc, Fail);
  }
  Usage(absl::StrCat("unknown command '", cmd,
                     "'; use jobs, checkpoints, show, pin, unpin, delete, gc, restore, "
                     "restart, incidents, nodes, audit, verify or report"));
}
