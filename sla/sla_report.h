// The recovery SLA report of a job: per-incident timelines, MTTD / MTTR /
// restore time / lost work as distributions, goodput with Google's badput
// buckets, durability lag, compliance against targets and the Young/Daly
// checkpoint-interval advice (proto/snapback/v1/report.proto; every
// definition and its source in docs/sla.md).
//
// ComputeReport() is a pure function of the coordinator's durable logs (the
// incident log, the run log, the commit log) and a "now": the server feeds
// it from its stores, tests feed it scripted timelines with known
// timestamps. RenderMarkdown() and RenderHtml() turn a report into text for
// a terminal and one self-contained HTML page (inline SVG charts, no
// scripts, no network); ReportToJson() into the proto's canonical JSON.
//
// Thread-safe (no shared state).
#ifndef SNAPBACK_SLA_SLA_REPORT_H_
#define SNAPBACK_SLA_SLA_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "snapback/v1/coordinator.pb.h"
#include "snapback/v1/detector.pb.h"
#include "snapback/v1/report.pb.h"

namespace snapback::sla {

// The targets a report checks when the caller sets none.
// Default: MTTR <= 5 min, lost work <= 10 min per incident, goodput >= 95 %,
// MTTD <= 1 min.
v1::SlaTargets DefaultTargets();

struct ReportInput {
  // The job as the coordinator's metadata has it (world size, ...).
  v1::JobInfo job;
  // The detector's state of the job now ("RUNNING", "FINISHED", ...).
  std::string state;
  std::vector<v1::Incident> incidents;  // oldest first
  std::vector<v1::JobRun> runs;         // oldest first
  // Every checkpoint the coordinator still knows (any state).
  std::vector<v1::CheckpointInfo> checkpoints;
  int64_t now_unix_ms = 0;
  // The window; 0 = from the first run / until now.
  int64_t from_unix_ms = 0;
  int64_t to_unix_ms = 0;
  // Default: DefaultTargets()
  v1::SlaTargets targets = DefaultTargets();
  // The clients' heartbeat step report gap (client/heartbeat.h): steps at
  // least this long are known exactly at a fault.
  // Default: 50 ms
  absl::Duration step_report_gap = absl::Milliseconds(50);
  // Points of the over-time series.
  // Default: 48
  int series_points = 48;
};

// The report. Never fails: what cannot be computed is left at 0 and said in
// `notes`.
v1::SlaReport ComputeReport(const ReportInput& in);

// For a terminal: a summary, the incident table, the distributions, the
// badput split, compliance and the interval advice.
std::string RenderMarkdown(const v1::SlaReport& report);
// One self-contained HTML page with inline SVG charts: the incident
// timeline, MTTR and lost-work distributions, goodput and durability lag
// over time. No scripts, no external resources.
std::string RenderHtml(const v1::SlaReport& report);
// Canonical protobuf JSON (docs/sla.md), pretty-printed.
std::string ReportToJson(const v1::SlaReport& report);

}  // namespace snapback::sla

#endif  // SNAPBACK_SLA_SLA_REPORT_H_
