#include "common/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace snapback {
namespace {

// Flag names are C identifiers in ABSL_FLAG (data_dir); on the command line
// and in --help they are written with dashes (--data-dir). Both are accepted.
std::string Dashed(absl::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

// "--data-dir=x" -> "--data_dir=x": only the name part changes.
std::string Normalize(absl::string_view arg) {
  const size_t start = arg[1] == '-' ? 2 : 1;
  size_t end = arg.find('=');
  if (end == absl::string_view::npos) end = arg.size();
  std::string out(arg);
  std::replace(out.begin() + start, out.begin() + end, '-', '_');
  return out;
}

bool IsHelp(absl::string_view arg) {
  return arg == "--help" || arg == "-h" || arg == "-help" || arg == "--helpfull";
}

// --help: the usage text, then the binary's flags sorted by name.
void PrintHelp(absl::string_view usage, absl::string_view flags_file) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    // Abseil may normalize the file name it records (a path prefix removed).
    const std::string file = flag->Filename();
    if (!file.empty() && absl::EndsWith(flags_file, file)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::string out = absl::StrCat(usage, "\n\nFlags:\n");
  for (const absl::CommandLineFlag* flag : flags) {
    const bool is_bool = flag->IsOfType<bool>();
    std::string def = flag->DefaultValue();
    if (def.empty()) def = "none";
    absl::StrAppend(&out, "  --", Dashed(flag->Name()), is_bool ? "" : "=VALUE",
                    "\n      ", flag->Help(), " (default: ", def, ")\n");
  }
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

// Checks one flag the way absl::ParseCommandLine will read it, so that a bad
// flag exits 2 with our one-line message (Abseil exits 1 with its own).
// Returns how many extra argv entries the flag consumed (its value).
int CheckFlag(absl::string_view program, absl::string_view arg, const char* next) {
  absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
  absl::string_view name = body;
  absl::string_view value;
  bool has_value = false;
  if (size_t eq = body.find('='); eq != absl::string_view::npos) {
    name = body.substr(0, eq);
    value = body.substr(eq + 1);
    has_value = true;
  }
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  bool negated = false;
  if (flag == nullptr && absl::StartsWith(name, "no")) {
    flag = absl::FindCommandLineFlag(name.substr(2));
    negated = flag != nullptr && flag->IsOfType<bool>() && !has_value;
    if (!negated) flag = nullptr;
  }
  if (flag == nullptr)
    ExitBadFlag(program, absl::StrCat("unknown flag --", Dashed(name)));
  int consumed = 0;
  std::string text;
  if (flag->IsOfType<bool>()) {
    text = negated ? "false" : has_value ? std::string(value) : "true";
  } else if (has_value) {
    text = std::string(value);
  } else {
    if (next == nullptr)
      ExitBadFlag(program, absl::StrCat("--", Dashed(name), " needs a value"));
    text = next;
    consumed = 1;
  }
  std::string error;
  if (!flag->ParseFrom(text, &error)) {
    ExitBadFlag(program, absl::StrCat("--", Dashed(name), " '", text, "': ", error));
  }
  return consumed;
}

}  // namespace

CommandLine ParseCommandLineOrExit(int argc, char** argv, absl::string_view program,
                                   absl::string_view usage, absl::string_view flags_file,
                                   bool allow_positional) {
  // Abseil aborts on a second call; a binary parses once, a test many times.
  static const bool usage_set = (absl::SetProgramUsageMessage(usage), true);
  (void)usage_set;
  std::vector<std::string> normalized = {argv[0]};
  int separator = argc;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") {
      separator = i;
      break;
    }
    if (IsHelp(arg)) {
      PrintHelp(usage, flags_file);
      std::exit(0);
    }
    if (arg.size() < 2 || arg[0] != '-') {
      if (!allow_positional) {
        ExitBadFlag(program, absl::StrCat("unexpected argument '", arg, "'"));
      }
      normalized.emplace_back(arg);
      continue;
    }
    normalized.push_back(Normalize(arg));
    const int consumed =
        CheckFlag(program, normalized.back(), i + 1 < argc ? argv[i + 1] : nullptr);
    if (consumed == 1) normalized.emplace_back(argv[++i]);
  }
  // Everything is known to parse now: Abseil sets the flags.
  std::vector<char*> pointers;
  for (std::string& a : normalized) pointers.push_back(a.data());
  pointers.push_back(nullptr);
  std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(normalized.size()), pointers.data());
  CommandLine line;
  for (size_t i = 1; i < rest.size(); ++i) line.args.emplace_back(rest[i]);
  if (separator < argc) {
    for (int i = separator + 1; i < argc; ++i) line.args.emplace_back(argv[i]);
  }
  return line;
}

void ExitBadFlag(absl::string_view program, absl::string_view message) {
  std::fprintf(stderr, "%.*s: %.*s (see --help)\n", static_cast<int>(program.size()),
               program.data(), static_cast<int>(message.size()), message.data());
  std::exit(2);
}

void ExitFailure(absl::string_view program, absl::string_view message) {
  std::fprintf(stderr, "%.*s: %.*s\n", static_cast<int>(program.size()), program.data(),
               static_cast<int>(message.size()), message.data());
  std::exit(1);
}

absl::Duration CheckDurationFlag(absl::string_view program, absl::string_view name,
                                 absl::Duration value, bool zero_ok) {
  if (value < absl::ZeroDuration() || (!zero_ok && value == absl::ZeroDuration()) ||
      value == absl::InfiniteDuration()) {
    ExitBadFlag(program, absl::StrCat("--", name, " '", absl::FormatDuration(value),
                                      "' must be a ", zero_ok ? "" : "positive ",
                                      "duration such as 90s, 30m or 1h"));
  }
  return value;
}

}  // namespace snapback
