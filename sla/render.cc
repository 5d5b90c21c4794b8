// Markdown, HTML (inline SVG) and JSON forms of an SLA report.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "sla/sla_report.h"

namespace snapback::sla {
namespace {

std::string Utc(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%E3S UTC", absl::FromUnixMillis(unix_ms),
                          absl::UTCTimeZone());
}

// A duration for people: 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min.
std::string Dur(double seconds) {
  if (seconds < 0) return "-";
  if (seconds < 1) return absl::StrFormat("%.0f ms", seconds * 1000);
  if (seconds < 60) return absl::StrFormat("%.1f s", seconds);
  if (seconds < 3600) {
    return absl::StrFormat("%d min %02d s", static_cast<int>(seconds / 60),
                           static_cast<int>(std::fmod(seconds, 60)));
  }
  return absl::StrFormat("%d h %02d min", static_cast<int>(seconds / 3600),
                         static_cast<int>(std::fmod(seconds, 3600) / 60));
}

std::string Pct(double ratio) { return absl::StrFormat("%.1f %%", 100 * ratio); }

std::string Steps(int64_t n) { return n < 0 ? "-" : absl::StrCat(n); }

std::string Mark(bool ok) { return ok ? "ok" : "MISSED"; }

std::string Bytes(uint64_t b) {
  if (b < (1u << 20)) return absl::StrFormat("%.1f KiB", b / 1024.0);
  if (b < (1ull << 30)) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  return absl::StrFormat("%.2f GiB", b / 1073741824.0);
}

std::string DistRow(const std::string& name, const v1::Distribution& d, bool seconds,
                    const std::string& target) {
  auto f = [&](double v) { return seconds ? Dur(v) : absl::StrFormat("%.0f", v); };
  if (d.count() == 0)
    return absl::StrCat("| ", name, " | 0 | - | - | - | ", target, " |\n");
  return absl::StrCat("| ", name, " | ", d.count(), " | ", f(d.p50()), " | ", f(d.p90()),
                      " | ", f(d.max()), " | ", target, " |\n");
}

struct Bucket {
  const char* name;
  double seconds;
};

std::vector<Bucket> Buckets(const v1::SlaReport& r) {
  const v1::Badput& b = r.badput();
  return {
      {"UNPRODUCTIVE_CHECKPOINT_SAVE_TIME", b.unproductive_checkpoint_save_time()},
      {"UNPRODUCTIVE_CHECKPOINT_RESTORE_TIME", b.unproductive_checkpoint_restore_time()},
      {"WASTED_PROGRESS_FROM_DISRUPTION", b.wasted_progress_from_disruption()},
      {"INFRASTRUCTURE_RECOVERY_FROM_DISRUPTION",
       b.infrastructure_recovery_from_disruption()},
      {"PROGRAM_STARTUP", b.program_startup()},
      {"OTHER", b.other()},
  };
}

std::string Esc(const std::string& s) {
  return absl::StrReplaceAll(
      s,
      {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}, {"'", "&#39;"}});
}

// --- SVG -------------------------------------------------------------------

constexpr int kW = 900;  // chart width in px
constexpr int kLeft = 70, kRight = 20;

double X(int64_t t, int64_t from, int64_t to) {
  if (to <= from) return kLeft;
  return kLeft + static_cast<double>(t - from) / static_cast<double>(to - from) *
                     (kW - kLeft - kRight);
}

std::string Axis(int64_t from, int64_t to, int y) {
  std::string s =
      absl::StrFormat("<line class=\"axis\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>",
                      kLeft, y, kW - kRight, y);
  for (int i = 0; i <= 4; ++i) {
    const int64_t t = from + static_cast<int64_t>(static_cast<double>(to - from) * i / 4);
    const char* anchor = i == 0 ? "start" : i == 4 ? "end" : "middle";
    absl::StrAppendFormat(
        &s, "<text class=\"tick\" text-anchor=\"%s\" x=\"%.1f\" y=\"%d\">%s</text>",
        anchor, X(t, from, to), y + 14,
        absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(t), absl::UTCTimeZone()));
  }
  return s;
}

std::string Timeline(const v1::SlaReport& r) {
  const int lane = 26, top = 10;
  const int h = top + lane * std::max(1, r.incidents_size()) + 30;
  const int64_t from = r.from_unix_ms(), to = std::max(r.to_unix_ms(), from + 1);
  std::string s = absl::StrFormat(
      "<svg id=\"timeline\" class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" "
      "height=\"%d\" "
      "role=\"img\" aria-label=\"incident timeline\">",
      kW, h, kW, h);
  int row = 0;
  for (const v1::IncidentReport& x : r.incidents()) {
    const int y = top + lane * row++;
    absl::StrAppendFormat(&s, "<g class=\"incident\" data-seq=\"%d\" data-kind=\"%s\">",
                          x.seq(), Esc(x.kind()));
    absl::StrAppendFormat(&s, "<text class=\"label\" x=\"4\" y=\"%d\">#%d %s</text>",
                          y + 15, x.seq(), Esc(x.kind()));
    const int64_t end = x.first_new_step_unix_ms() > 0 ? x.first_new_step_unix_ms() : to;
    struct Seg {
      const char* cls;
      int64_t a, b;
      const char* title;
    };
    const int64_t lost_from =
        x.lost_seconds() > 0
            ? x.fault_unix_ms() - static_cast<int64_t>(x.lost_seconds() * 1000)
            : 0;
    const Seg segs[] = {
        {"phase-lost", lost_from, x.fault_unix_ms(), "work lost (redone)"},
        {"phase-detect", x.fault_unix_ms(), x.detected_unix_ms(), "fault -> detected"},
        {"phase-restart", x.detected_unix_ms(),
         x.ranks_back_unix_ms() > 0 ? x.ranks_back_unix_ms() : end,
         "detected -> ranks back"},
        {"phase-restore", x.ranks_back_unix_ms(),
         x.restored_unix_ms() > 0 ? x.restored_unix_ms() : end, "ranks back -> restored"},
        {"phase-warmup", x.restored_unix_ms(), end, "restored -> first new step"},
    };
    for (const Seg& g : segs) {
      if (g.a <= 0 || g.b <= g.a) continue;
      const double x0 = X(std::max(g.a, from), from, to);
      const double x1 = X(std::min(g.b, to), from, to);
      absl::StrAppendFormat(&s,
                            "<rect class=\"%s\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" "
                            "height=\"18\"><title>%s: %s</title></rect>",
                            g.cls, x0, y, std::max(1.0, x1 - x0), g.title,
                            Dur(static_cast<double>(g.b - g.a) / 1000));
    }
    s += "</g>";
  }
  if (r.incidents_size() == 0) {
    absl::StrAppendFormat(&s,
                          "<text class=\"label\" x=\"%d\" y=\"%d\">no incidents</text>",
                          kLeft, top + 15);
  }
  s += Axis(from, to, h - 24);
  s += "</svg>";
  return s;
}

// Histogram of a distribution's values, with p50 and p90 marked.
std::string Histogram(const std::string& id, const v1::Distribution& d,
                      const std::string& unit, bool seconds) {
  const int h = 170, bottom = 140, bins = 10;
  std::string s = absl::StrFormat(
      "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
      "role=\"img\">",
      id, kW, h, kW, h);
  if (d.count() == 0) {
    absl::StrAppendFormat(
        &s, "<text class=\"label\" x=\"%d\" y=\"40\">no data</text></svg>", kLeft);
    return s;
  }
  const double max = std::max(d.max(), 1e-9);
  std::vector<int> count(bins, 0);
  for (double v : d.values()) {
    ++count[std::clamp(static_cast<int>(v / max * bins), 0, bins - 1)];
  }
  const int most = *std::max_element(count.begin(), count.end());
  const double bw = static_cast<double>(kW - kLeft - kRight) / bins;
  for (int b = 0; b < bins; ++b) {
    const double bh = most > 0 ? 110.0 * count[b] / most : 0;
    absl::StrAppendFormat(&s,
                          "<rect class=\"bar\" data-count=\"%d\" x=\"%.1f\" y=\"%.1f\" "
                          "width=\"%.1f\" height=\"%.1f\"><title>%d</title></rect>",
                          count[b], kLeft + b * bw + 1, bottom - bh, bw - 2, bh,
                          count[b]);
  }
  auto fmt = [&](double v) {
    return seconds ? Dur(v) : absl::StrFormat("%.0f %s", v, unit);
  };
  // Labels stay inside the chart (left of the line near the right edge),
  // p90's a row below p50's.
  int row = 0;
  for (auto [cls, v, name] :
       {std::tuple{"p50", d.p50(), "p50"}, std::tuple{"p90", d.p90(), "p90"}}) {
    const double x = kLeft + v / max * (kW - kLeft - kRight) * (bins - 0.001) / bins;
    absl::StrAppendFormat(
        &s,
        "<line class=\"%s\" x1=\"%.1f\" y1=\"20\" x2=\"%.1f\" y2=\"%d\"/>"
        "<text class=\"mark\" text-anchor=\"%s\" x=\"%.1f\" y=\"%d\">%s %s</text>",
        cls, x, x, bottom, x > kW - 160 ? "end" : "start", x > kW - 160 ? x - 4 : x + 4,
        14 + 12 * row++, name, fmt(v));
  }
  absl::StrAppendFormat(
      &s,
      "<line class=\"axis\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>"
      "<text class=\"tick\" x=\"%d\" y=\"%d\">0</text>"
      "<text class=\"tick\" text-anchor=\"end\" x=\"%d\" y=\"%d\">%s</text>"
      "</svg>",
      kLeft, bottom, kW - kRight, bottom, kLeft, bottom + 14, kW - kRight, bottom + 14,
      fmt(max));
  return s;
}

// A line over time; `ratio` charts 0..1 as percent.
std::string Series(const std::string& id,
                   const google::protobuf::RepeatedPtrField<v1::Point>& pts, int64_t from,
                   int64_t to, bool ratio, double target) {
  const int h = 180, top = 15, bottom = 150;
  std::string s = absl::StrFormat(
      "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
      "role=\"img\">",
      id, kW, h, kW, h);
  to = std::max(to, from + 1);
  double max = ratio ? 1.0 : 0;
  for (const v1::Point& p : pts) max = std::max(max, p.value());
  if (max <= 0) max = 1;
  auto Y = [&](double v) { return bottom - (bottom - top) * v / max; };
  std::vector<std::string> xy;
  for (const v1::Point& p : pts) {
    xy.push_back(absl::StrFormat("%.1f,%.1f", X(p.unix_ms(), from, to), Y(p.value())));
  }
  absl::StrAppendFormat(&s,
                        "<polyline class=\"series\" data-points=\"%d\" points=\"%s\"/>",
                        pts.size(), absl::StrJoin(xy, " "));
  if (target > 0) {
    absl::StrAppendFormat(
        &s,
        "<line class=\"target\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>"
        "<text class=\"mark\" text-anchor=\"end\" x=\"%d\" y=\"%.1f\">target %s</text>",
        kLeft, Y(target), kW - kRight, Y(target), kW - kRight, Y(target) - 4,
        ratio ? Pct(target) : Dur(target));
  }
  absl::StrAppendFormat(&s,
                        "<text class=\"tick\" x=\"4\" y=\"%d\">%s</text>"
                        "<text class=\"tick\" x=\"4\" y=\"%d\">0</text>",
                        top + 4, ratio ? "100 %" : Dur(max), bottom);
  s += Axis(from, to, bottom);
  s += "</svg>";
  return s;
}

constexpr char kStyle[] = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:960px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#57606a;font-size:12px}
.ok{color:#1a7f37}.bad{color:#cf222e}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left}
th{background:#f6f8fa}.chart{display:block;margin:6px 0;max-width:100%;height:auto}
.axis{stroke:#8c959f}.tick,.mark,.label{font-size:11px;fill:#57606a}
.phase-lost{fill:#d4a72c}.phase-detect{fill:#cf222e}.phase-restart{fill:#fb8f44}
.phase-restore{fill:#0969da}.phase-warmup{fill:#8250df}.bar{fill:#0969da}
.p50{stroke:#1a7f37;stroke-dasharray:4 3}.p90{stroke:#cf222e;stroke-dasharray:4 3}
.series{fill:none;stroke:#0969da;stroke-width:2}.target{stroke:#cf222e;stroke-dasharray:5 4}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
)";

}  // namespace

std::string RenderMarkdown(const v1::SlaReport& r) {
  std::string s;
  absl::StrAppend(&s, "# Recovery SLA report: job ", r.job_id(), "\n\n");
  absl::StrAppend(&s, "Window ", Utc(r.from_unix_ms()), " to ", Utc(r.to_unix_ms()), " (",
                  Dur((r.to_unix_ms() - r.from_unix_ms()) / 1000.0), "), state ",
                  r.state(), ", ", r.world_size(), " ranks. Verdict: **",
                  r.compliant() ? "meets its targets" : "MISSES its targets", "**.\n\n");
  absl::StrAppend(&s,
                  "| goodput (ETTR) | incidents | MTTD p90 | MTTR p90 | lost work p90 | "
                  "durability lag now / max |\n|---|---|---|---|---|---|\n");
  absl::StrAppend(&s, "| ", Pct(r.goodput()), " | ", r.incidents_size(), " | ",
                  Dur(r.mttd_seconds().p90()), " | ", Dur(r.mttr_seconds().p90()), " | ",
                  Dur(r.lost_seconds().p90()), " | ", Dur(r.durability_lag_seconds()),
                  " / ", Dur(r.durability_lag_max_seconds()), " |\n\n");

  absl::StrAppend(&s, "## Incidents\n\n");
  if (r.incidents_size() == 0) {
    absl::StrAppend(&s, "None in the window.\n\n");
  } else {
    absl::StrAppend(
        &s,
        "| # | kind | rank | fault at | MTTD | MTTR | restore | restored step "
        "(source) | lost steps | lost time | cause |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const v1::IncidentReport& x : r.incidents()) {
      absl::StrAppend(
          &s, "| ", x.seq(), " | ", x.kind(), " | ",
          x.rank() < 0 ? "-" : absl::StrCat(x.rank()), " | ",
          absl::FormatTime("%H:%M:%E3S", absl::FromUnixMillis(x.fault_unix_ms()),
                           absl::UTCTimeZone()),
          " | ", Dur(x.mttd_seconds()), " | ", Dur(x.mttr_seconds()), " | ",
          Dur(x.restore_seconds()), " | ",
          x.restored_step() < 0
              ? "-"
              : absl::StrCat(x.restored_step(), " (", x.restore_source(), ")"),
          " | ", Steps(x.lost_steps()), " | ", Dur(x.lost_seconds()), " | ",
          absl::StrReplaceAll(x.reason(), {{"|", "/"}, {"\n", " "}}), " |\n");
    }
    absl::StrAppend(&s, "\n");
  }

  absl::StrAppend(&s,
                  "## Distributions\n\n| metric | n | p50 | p90 | max | target |\n"
                  "|---|---|---|---|---|---|\n");
  const v1::SlaTargets& t = r.targets();
  s += DistRow("MTTD (fault -> detected)", r.mttd_seconds(), true,
               absl::StrCat("<= ", Dur(t.mttd_seconds()), " ", Mark(r.meets_mttd())));
  s += DistRow("MTTR (detected -> first new step)", r.mttr_seconds(), true,
               absl::StrCat("<= ", Dur(t.mttr_seconds()), " ", Mark(r.meets_mttr())));
  s += DistRow("restore time", r.restore_seconds(), true, "");
  s += DistRow(
      "lost work (time)", r.lost_seconds(), true,
      absl::StrCat("<= ", Dur(t.lost_work_seconds()), " ", Mark(r.meets_lost_work())));
  s += DistRow(
      r.lost_steps_exact() ? "lost work (steps)" : "lost work (steps, lower bound)",
      r.lost_steps(), false, "");
  s += DistRow("save stall per checkpoint", r.save_stall_seconds(), true, "");
  absl::StrAppend(&s, "\n");

  absl::StrAppend(&s, "## Goodput\n\n", Pct(r.goodput()), " productive (",
                  Dur(r.productive_seconds()), " of ", Dur(r.wall_seconds()),
                  " of wall time; target ", Pct(t.goodput()), " ",
                  Mark(r.meets_goodput()),
                  "). Badput:\n\n| bucket | time | share |\n|---|---|---|\n");
  for (const Bucket& b : Buckets(r)) {
    absl::StrAppend(&s, "| ", b.name, " | ", Dur(b.seconds), " | ",
                    Pct(r.wall_seconds() > 0 ? b.seconds / r.wall_seconds() : 0), " |\n");
  }
  absl::StrAppend(
      &s, "\n## Checkpoints\n\n", r.checkpoints_committed(),
      " committed in the window: ", Bytes(r.logical_bytes()), " logical, ",
      Bytes(r.new_bytes()), " new, ", Bytes(r.sent_bytes()), " sent; stall overhead ",
      Pct(r.checkpoint_stall_overhead()), " of wall time. Durability lag (RPO) now ",
      Dur(r.durability_lag_seconds()), ", mean ", Dur(r.durability_lag_mean_seconds()),
      ", max ", Dur(r.durability_lag_max_seconds()), ".\n\n");
  absl::StrAppend(&s, "## Checkpoint interval (Young/Daly)\n\n", r.advice().summary(),
                  ".\n");
  if (r.notes_size() > 0) {
    absl::StrAppend(&s, "\nNotes:\n");
    for (const std::string& n : r.notes()) absl::StrAppend(&s, "- ", n, "\n");
  }
  return s;
}

std::string RenderHtml(const v1::SlaReport& r) {
  const v1::SlaTargets& t = r.targets();
  auto cls = [](bool ok) { return ok ? "ok" : "bad"; };
  std::string s = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
      // No favicon request (the live page's server has none: a 404 a
      // browser would log).
      "<link rel=\"icon\" href=\"data:,\">"
      "<title>snapback SLA report: ",
      Esc(r.job_id()), "</title><style>", kStyle, "</style></head><body>\n");
  absl::StrAppend(&s, "<h1>Recovery SLA report: job ", Esc(r.job_id()), "</h1>");
  absl::StrAppend(&s, "<div class=\"sub\">", Utc(r.from_unix_ms()), " to ",
                  Utc(r.to_unix_ms()), " &middot; state ", Esc(r.state()), " &middot; ",
                  r.world_size(), " ranks &middot; generated ",
                  Utc(r.generated_unix_ms()), "</div>");
  absl::StrAppend(&s, "<div class=\"cards\">");
  auto card = [&](const std::string& id, const std::string& value,
                  const std::string& label, const char* c) {
    absl::StrAppend(&s, "<div class=\"card\"><b id=\"", id, "\" class=\"", c, "\">",
                    Esc(value), "</b><span>", Esc(label), "</span></div>");
  };
  card("verdict", r.compliant() ? "meets targets" : "misses targets", "compliance",
       cls(r.compliant()));
  card("goodput-value", Pct(r.goodput()),
       absl::StrCat("goodput / ETTR (target ", Pct(t.goodput()), ")"),
       cls(r.meets_goodput()));
  card("incidents-value", absl::StrCat(r.incidents_size()), "incidents", "");
  card("mttd-value", Dur(r.mttd_seconds().p90()), "MTTD p90", cls(r.meets_mttd()));
  card("mttr-value", Dur(r.mttr_seconds().p90()),
       absl::StrCat("MTTR p90 (target ", Dur(t.mttr_seconds()), ")"),
       cls(r.meets_mttr()));
  card("lost-value", Dur(r.lost_seconds().p90()),
       absl::StrCat("lost work p90 (target ", Dur(t.lost_work_seconds()), ")"),
       cls(r.meets_lost_work()));
  card("lag-value", Dur(r.durability_lag_seconds()), "durability lag now", "");
  absl::StrAppend(&s, "</div>");

  absl::StrAppend(
      &s,
      "<h2>Incident timeline</h2><div class=\"legend\">"
      "<span><i class=\"phase-lost\" style=\"background:#d4a72c\"></i>work lost</span>"
      "<span><i style=\"background:#cf222e\"></i>fault &rarr; detected</span>"
      "<span><i style=\"background:#fb8f44\"></i>restart</span>"
      "<span><i style=\"background:#0969da\"></i>restore</span>"
      "<span><i style=\"background:#8250df\"></i>first new step</span></div>",
      Timeline(r));
  absl::StrAppend(&s,
                  "<table id=\"incidents\"><tr><th>#</th><th>kind</th><th>rank</th>"
                  "<th>fault at</th><th>MTTD</th><th>MTTR</th><th>restore</th>"
                  "<th>restored step</th><th>lost steps</th><th>lost time</th>"
                  "<th>cause</th></tr>");
  for (const v1::IncidentReport& x : r.incidents()) {
    absl::StrAppend(
        &s, "<tr class=\"incident-row\"><td>", x.seq(), "</td><td>", Esc(x.kind()),
        "</td><td>", x.rank() < 0 ? "-" : absl::StrCat(x.rank()), "</td><td>",
        Utc(x.fault_unix_ms()), "</td><td>", Dur(x.mttd_seconds()), "</td><td class=\"",
        x.closed() ? cls(x.meets_mttr()) : "", "\">", Dur(x.mttr_seconds()), "</td><td>",
        Dur(x.restore_seconds()), "</td><td>",
        x.restored_step() < 0
            ? "-"
            : absl::StrCat(x.restored_step(), " (", x.restore_source(), ")"),
        "</td><td class=\"lost-steps\">", Steps(x.lost_steps()), "</td><td class=\"",
        x.closed() ? cls(x.meets_lost_work()) : "", "\">", Dur(x.lost_seconds()),
        "</td><td>", Esc(x.reason()), "</td></tr>");
  }
  absl::StrAppend(&s, "</table>");

  absl::StrAppend(&s, "<h2>MTTR distribution (detected &rarr; first new step)</h2>",
                  Histogram("mttr-dist", r.mttr_seconds(), "s", true));
  absl::StrAppend(&s, "<h2>Lost work distribution</h2>",
                  Histogram("lost-dist", r.lost_seconds(), "s", true));
  absl::StrAppend(&s, "<h2>Goodput over time (cumulative)</h2>",
                  Series("goodput", r.goodput_over_time(), r.from_unix_ms(),
                         r.to_unix_ms(), true, t.goodput()));
  absl::StrAppend(&s,
                  "<table id=\"badput\"><tr><th>badput bucket</th><th>time</th>"
                  "<th>share of wall time</th></tr>");
  for (const Bucket& b : Buckets(r)) {
    absl::StrAppend(&s, "<tr><td>", b.name, "</td><td>", Dur(b.seconds), "</td><td>",
                    Pct(r.wall_seconds() > 0 ? b.seconds / r.wall_seconds() : 0),
                    "</td></tr>");
  }
  absl::StrAppend(&s, "</table>");
  absl::StrAppend(&s, "<h2>Durability lag (age of the newest committed checkpoint)</h2>",
                  Series("lag", r.durability_lag_over_time(), r.from_unix_ms(),
                         r.to_unix_ms(), false, 0));
  absl::StrAppend(&s, "<p>", r.checkpoints_committed(),
                  " checkpoints committed: ", Bytes(r.logical_bytes()), " logical, ",
                  Bytes(r.new_bytes()), " new, ", Bytes(r.sent_bytes()),
                  " sent. Save stall p50 ", Dur(r.save_stall_seconds().p50()),
                  ", overhead ", Pct(r.checkpoint_stall_overhead()),
                  " of wall time. Lag mean ", Dur(r.durability_lag_mean_seconds()),
                  ", max ", Dur(r.durability_lag_max_seconds()), ".</p>");
  absl::StrAppend(&s, "<h2>Checkpoint interval (Young/Daly)</h2><p id=\"advice\">",
                  Esc(r.advice().summary()), ".</p>");
  if (r.notes_size() > 0) {
    absl::StrAppend(&s, "<h2>Notes</h2><ul>");
    for (const std::string& n : r.notes()) absl::StrAppend(&s, "<li>", Esc(n), "</li>");
    absl::StrAppend(&s, "</ul>");
  }
  absl::StrAppend(&s,
                  "<p class=\"sub\">Definitions: docs/sla.md in the snapback sources.</p>"
                  "</body></html>\n");
  return s;
}

std::string ReportToJson(const v1::SlaReport& report) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names =
      true;  // as snapbackctl --json prints every message
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(report, &out, options).ok())
    return "{}";
  return out;
}

}  // namespace snapback::sla
