// The built-in tools against a real bwrap sandbox: what they return, and that hostile paths
// (traversal, absolute paths, symlinks planted by the sandbox that lead out) are refused
// with a clear error and change nothing.
#include "tools/builtin/builtin_tools.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "sandbox/bwrap/bwrap_driver.h"

namespace agentd::tools {
namespace {

namespace fs = std::filesystem;
using Kind = ToolOutcome::Kind;

class BuiltinToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/agentd-builtin-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    chmod(tmpl, 0711);
    sandbox::BwrapOptions o;
    o.init_path = AGENTD_SANDBOX_INIT;
    o.state_dir = dir_ + "/state";
    driver_ = sandbox::BwrapDriver::Open(o);
    ASSERT_TRUE(driver_->capabilities().available) << driver_->capabilities().unavailable_reason;
    root_ = dir_ + "/box";
    fs::create_directories(root_);
    sandbox::SandboxSpec spec;
    spec.id = "builtin-" + std::to_string(getpid());
    spec.root = root_;
    spec.limits.disk_mb = 4;
    auto box = driver_->Create(spec);
    ASSERT_TRUE(box.ok()) << box.status().ToString();
    box_ = std::move(box).value();
    // A file outside the workspace that nothing may read through the tools.
    std::ofstream(dir_ + "/outside.txt") << "host secret";
  }
  void TearDown() override {
    box_.reset();
    if (driver_) {
      EXPECT_TRUE(driver_->Discard(root_).ok());
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  ToolOutcome Call(std::string_view name, const Json& args) {
    return CallBuiltinTool(name, args, *box_, nullptr);
  }
  Json CallOk(std::string_view name, const Json& args) {
    ToolOutcome o = Call(name, args);
    EXPECT_EQ(o.kind, Kind::kOk) << name << ": " << o.output;
    return Json::parse(o.output, nullptr, false);
  }
  std::string Refusal(std::string_view name, const Json& args) {
    ToolOutcome o = Call(name, args);
    EXPECT_EQ(o.kind, Kind::kToolError) << name << " " << args.dump() << ": " << o.output;
    return o.output;
  }

  std::string dir_, root_;
  std::unique_ptr<sandbox::BwrapDriver> driver_;
  std::unique_ptr<sandbox::Sandbox> box_;
};

TEST_F(BuiltinToolsTest, FileToolsAndExecShareTheWorkspace) {
  EXPECT_EQ(CallOk("write_file", {{"path", "src/notes.txt"}, {"content", "alpha\nbeta\n"}}),
            Json({{"bytes_written", 11}}));
  // The sandbox sees the file and may change it: it belongs to the sandbox's user.
  Json r = CallOk("exec", {{"command", "cat src/notes.txt && echo gamma >> src/notes.txt"}});
  EXPECT_EQ(r["stdout"], "alpha\nbeta\n");
  EXPECT_EQ(r["exit_code"], 0);
  EXPECT_EQ(CallOk("read_file", {{"path", "src/notes.txt"}}),
            Json({{"content", "alpha\nbeta\ngamma\n"}}));
  EXPECT_EQ(CallOk("edit_file", {{"path", "src/notes.txt"}, {"old", "beta"}, {"new", "BETA"}}),
            Json({{"replacements", 1}}));
  EXPECT_EQ(CallOk("read_file", {{"path", "./src/notes.txt"}})["content"], "alpha\nBETA\ngamma\n");
  Json list = CallOk("list_files", Json::object());
  ASSERT_EQ(list["entries"].size(), 2u) << list.dump();
  EXPECT_EQ(list["entries"][0], Json({{"path", "src"}, {"type", "dir"}}));
  EXPECT_EQ(list["entries"][1], Json({{"path", "src/notes.txt"}, {"type", "file"}, {"size", 17}}));
  EXPECT_EQ(list["truncated"], false);
  EXPECT_EQ(CallOk("list_files", {{"path", "src"}})["entries"].size(), 1u);
}

TEST_F(BuiltinToolsTest, EditNeedsExactlyOneOccurrenceAndChangesNothingOtherwise) {
  CallOk("write_file", {{"path", "a.txt"}, {"content", "x x"}});
  EXPECT_NE(Refusal("edit_file", {{"path", "a.txt"}, {"old", "x"}, {"new", "y"}}).find("occurs 2 times"),
            std::string::npos);
  EXPECT_NE(Refusal("edit_file", {{"path", "a.txt"}, {"old", "z"}, {"new", "y"}}).find("does not occur"),
            std::string::npos);
  EXPECT_EQ(CallOk("read_file", {{"path", "a.txt"}})["content"], "x x");
  EXPECT_NE(Refusal("edit_file", {{"path", "missing.txt"}, {"old", "x"}, {"new", "y"}}).find("does not exist"),
            std::string::npos);
}

TEST_F(BuiltinToolsTest, RefusesPathsThatLeaveTheWorkspace) {
  for (const char* path : {"../outside.txt", "a/../../outside.txt", "/etc/passwd", ""}) {
    std::string why = Refusal("read_file", {{"path", path}});
    EXPECT_TRUE(why.find("'..'") != std::string::npos || why.find("absolute") != std::string::npos ||
                why.find("empty") != std::string::npos)
        << path << ": " << why;
    Refusal("write_file", {{"path", path}, {"content", "x"}});
  }
  EXPECT_NE(Refusal("read_file", {{"path", std::string("a\0b", 3)}}).find("NUL"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
}

TEST_F(BuiltinToolsTest, RefusesSymlinksPlantedToLeadOut) {
  // The sandbox plants symlinks to the host's root, to a host file by absolute path, and a
  // folder link; the host-side tools must not follow any of them out.
  Json r = CallOk("exec", {{"command", "ln -s / root && ln -s " + dir_ + "/outside.txt secret && "
                                       "ln -s " + dir_ + " up && ln -s ../.. rel && "
                                       "echo inner > inner.txt && ln -s inner.txt alias"}});
  ASSERT_EQ(r["exit_code"], 0) << r.dump();
  for (const char* path : {"root/etc/passwd", "secret", "up/outside.txt", "rel/etc/hostname"}) {
    std::string why = Refusal("read_file", {{"path", path}});
    EXPECT_NE(why.find("outside the workspace"), std::string::npos) << path << ": " << why;
    EXPECT_EQ(why.find("host secret"), std::string::npos);
  }
  EXPECT_NE(Refusal("write_file", {{"path", "up/planted.txt"}, {"content", "x"}}).find("outside"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ + "/planted.txt"));
  // Writing to the name of a symlink replaces nothing outside either.
  EXPECT_NE(Refusal("write_file", {{"path", "secret"}, {"content", "pwned"}}).find("symlink"),
            std::string::npos);
  std::ifstream f(dir_ + "/outside.txt");
  std::string host((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(host, "host secret");
  Refusal("list_files", {{"path", "up"}});
  // A symlink that stays inside works.
  EXPECT_EQ(CallOk("read_file", {{"path", "alias"}})["content"], "inner\n");
}

TEST_F(BuiltinToolsTest, RefusesBinaryAndOversizedFiles) {
  CallOk("exec", {{"command", "head -c 100 /dev/urandom > blob; head -c 2000000 /dev/zero | tr '\\0' a > big"}});
  EXPECT_NE(Refusal("read_file", {{"path", "blob"}}).find("not UTF-8 text"), std::string::npos);
  EXPECT_NE(Refusal("read_file", {{"path", "big"}}).find("use exec"), std::string::npos);
  EXPECT_NE(Refusal("read_file", {{"path", "."}}).find("folder"), std::string::npos);
}

TEST_F(BuiltinToolsTest, WritesStopAtTheDiskQuota) {
  if (geteuid() != 0) GTEST_SKIP() << "the disk quota needs agentd to run as root";
  std::string big(6 << 20, 'x');  // the sandbox has 4 MiB
  EXPECT_NE(Refusal("write_file", {{"path", "big.txt"}, {"content", big}}).find("workspace is full"),
            std::string::npos);
  // No partial file is left behind, and smaller writes still work.
  Json list = CallOk("list_files", Json::object());
  EXPECT_EQ(list["entries"].size(), 0u) << list.dump();
  CallOk("write_file", {{"path", "small.txt"}, {"content", "ok"}});
}

TEST_F(BuiltinToolsTest, ExecReportsTimeoutsAndTruncation) {
  Json r = CallOk("exec", {{"command", "sleep 30"}, {"timeout_ms", 200}});
  EXPECT_EQ(r["timed_out"], true);
  EXPECT_EQ(r["exit_code"], 137);
  EXPECT_NE(r["note"].get<std::string>().find("time limit"), std::string::npos);
  r = CallOk("exec", {{"command", "head -c 100000 /dev/zero | tr '\\0' b"}});
  EXPECT_EQ(r["truncated"], true);
  EXPECT_EQ(r["stdout"].get<std::string>().size(), 64u * 1024);
  EXPECT_NE(r["note"].get<std::string>().find("64 KiB"), std::string::npos);
  r = CallOk("exec", {{"command", "cat"}, {"stdin", "piped"}});
  EXPECT_EQ(r["stdout"], "piped");
}

TEST_F(BuiltinToolsTest, ExecStopsWhenCancelled) {
  auto start = std::chrono::steady_clock::now();
  ToolOutcome o = CallBuiltinTool("exec", {{"command", "sleep 30"}}, *box_, [&] {
    return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(200);
  });
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.output, "cancelled");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(BuiltinToolCatalog, EveryToolHasAValidSchema) {
  for (auto name : BuiltinToolNames()) {
    const BuiltinTool* t = FindBuiltinTool(name);
    ASSERT_NE(t, nullptr);
    Json schema = Json::parse(t->parameters, nullptr, false);
    EXPECT_TRUE(schema.is_object()) << name;
    EXPECT_EQ(schema["type"], "object");
  }
  EXPECT_EQ(FindBuiltinTool("rm_rf"), nullptr);
}

}  // namespace
}  // namespace agentd::tools
