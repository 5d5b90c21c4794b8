#include "common/flags.h"

#include <unistd.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "gtest/gtest.h"

ABSL_FLAG(std::string, data_dir, "", "a directory");
ABSL_FLAG(int, count, 3, "a count");
ABSL_FLAG(bool, loud, false, "a switch");

namespace snapback {
namespace {

// Runs ParseCommandLineOrExit over `args` (argv[0] added).
CommandLine Parse(std::vector<std::string> args, bool allow_positional = false) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return ParseCommandLineOrExit(static_cast<int>(args.size()), argv.data(), "prog",
                                "usage: prog [flags]", __FILE__, allow_positional);
}

TEST(FlagsTest, DashedNamesBothValueFormsAndTheSeparator) {
  CommandLine line =
      Parse({"--data-dir", "/d", "--count=7", "--loud", "--", "./train", "--lr", "3e-4"});
  EXPECT_EQ(absl::GetFlag(FLAGS_data_dir), "/d");
  EXPECT_EQ(absl::GetFlag(FLAGS_count), 7);
  EXPECT_TRUE(absl::GetFlag(FLAGS_loud));
  EXPECT_EQ(line.args, (std::vector<std::string>{"./train", "--lr", "3e-4"}));
  Parse({"--noloud", "--data_dir=/e"});
  EXPECT_FALSE(absl::GetFlag(FLAGS_loud));
  EXPECT_EQ(absl::GetFlag(FLAGS_data_dir), "/e");
}

TEST(FlagsDeathTest, BadFlagsExit2WithOneLine) {
  EXPECT_EXIT(Parse({"--bogus"}), ::testing::ExitedWithCode(2),
              "prog: unknown flag --bogus \\(see --help\\)");
  EXPECT_EXIT(Parse({"--count", "many"}), ::testing::ExitedWithCode(2),
              "prog: --count 'many': ");
  EXPECT_EXIT(Parse({"--data-dir"}), ::testing::ExitedWithCode(2),
              "prog: --data-dir needs a value");
  EXPECT_EXIT(Parse({"stray"}), ::testing::ExitedWithCode(2),
              "prog: unexpected argument 'stray'");
  EXPECT_EXIT(ExitFailure("prog", "cannot run"), ::testing::ExitedWithCode(1),
              "prog: cannot run\n");
  EXPECT_EXIT(CheckDurationFlag("prog", "grace", absl::ZeroDuration(), false),
              ::testing::ExitedWithCode(2), "--grace '0' must be a positive duration");
}

TEST(FlagsDeathTest, HelpListsTheFlagsWithDefaultsAndExits0) {
  // --help prints to stdout; the child sends it to stderr, where it is matched.
  EXPECT_EXIT(
      {
        dup2(STDERR_FILENO, STDOUT_FILENO);
        Parse({"--help"});
      },
      ::testing::ExitedWithCode(0),
      "usage: prog \\[flags\\]\n\nFlags:\n  --count=VALUE\n      a count \\(default: "
      "3\\)\n"
      "  --data-dir=VALUE\n      a directory \\(default: none\\)\n  --loud\n");
}

TEST(FlagsTest, PositionalArgumentsWhenAllowed) {
  CommandLine line = Parse({"job", "--count", "2", "step"}, /*allow_positional=*/true);
  EXPECT_EQ(absl::GetFlag(FLAGS_count), 2);
  EXPECT_EQ(line.args, (std::vector<std::string>{"job", "step"}));
}

}  // namespace
}  // namespace snapback
