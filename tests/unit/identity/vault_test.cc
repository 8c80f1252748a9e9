// The secrets vault against a real SQLite store in a temp dir.
#include "identity/vault.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "store/sqlite/sqlite_store.h"

namespace agentd::identity {
namespace {

class FixedClock final : public Clock {
 public:
  int64_t NowMillis() const override { return now; }
  std::chrono::steady_clock::time_point Steady() const override {
    return std::chrono::steady_clock::time_point(std::chrono::milliseconds(now));
  }
  int64_t now = 1'800'000'000'000;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class VaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("agentd_vault_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    auto s = store::sqlite::OpenSqliteStore({(dir_ / "db").string()});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    vault_ = OpenVault(KeyPath());
  }
  void TearDown() override {
    vault_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string KeyPath() const { return (dir_ / "secrets.key").string(); }
  std::unique_ptr<Vault> OpenVault(const std::string& key_file) {
    auto v = Vault::Load(store_.get(), &clock_, {key_file});
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return v.ok() ? std::move(v).value() : nullptr;
  }
  // Writes a stored row as it is, as someone with access to the database could.
  void WriteRow(store::SecretRow row) {
    store::WriteBatch b;
    b.secrets.push_back(std::move(row));
    ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  }
  store::SecretRow Row(const std::string& tenant, const std::string& name) {
    auto r = store_->GetSecret(tenant, name);
    EXPECT_TRUE(r.ok() && r->has_value());
    return r.ok() && r->has_value() ? **r : store::SecretRow{};
  }

  std::filesystem::path dir_;
  FixedClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Vault> vault_;
};

TEST_F(VaultTest, PutThenOpenRoundTripsAndListShowsNamesAndTimesOnly) {
  auto put = vault_->Put("ten_a", "api.key-1", "s3cr3t value");
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(put->created_ms, clock_.now);
  auto opened = vault_->Open("ten_a", "api.key-1");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(*opened, "s3cr3t value");

  clock_.now += 5000;
  ASSERT_TRUE(vault_->Put("ten_a", "api.key-1", "replaced").ok());
  EXPECT_EQ(*vault_->Open("ten_a", "api.key-1"), "replaced");
  auto list = vault_->List("ten_a");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "api.key-1");
  EXPECT_EQ((*list)[0].updated_ms, (*list)[0].created_ms + 5000);
  Json j = (*list)[0].ToJson();
  EXPECT_EQ(j["object"], "secret");
  EXPECT_FALSE(j.contains("value"));
  EXPECT_TRUE(vault_->List("ten_b")->empty());
  EXPECT_EQ(vault_->Open("ten_b", "api.key-1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(vault_->Open("ten_a", "other").status().code(), StatusCode::kNotFound);
}

TEST_F(VaultTest, BadNamesAndValuesAreRefusedNamingTheField) {
  for (const std::string& name :
       std::vector<std::string>{"", "a b", "a/b", "é", std::string(129, 'a'), "x:y"}) {
    auto r = vault_->Put("ten_a", name, "v");
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(r.status().message().find("'name'"), std::string::npos);
  }
  EXPECT_TRUE(vault_->Put("ten_a", std::string(128, 'a'), "v").ok());
  for (const std::string& value :
       std::vector<std::string>{std::string(), std::string(kMaxSecretBytes + 1, 'v')}) {
    auto r = vault_->Put("ten_a", "n", value);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'value'"), std::string::npos);
  }
  EXPECT_TRUE(vault_->Put("ten_a", "n", std::string(kMaxSecretBytes, 'v')).ok());
}

TEST_F(VaultTest, AnyTamperedByteOfTheSealedValueFailsToOpen) {
  ASSERT_TRUE(vault_->Put("ten_a", "k", "the value").ok());
  const store::SecretRow good = Row("ten_a", "k");
  for (size_t i = 0; i < good.sealed.size(); ++i) {
    store::SecretRow bad = good;
    bad.sealed[i] = static_cast<char>(bad.sealed[i] ^ 0x01);
    WriteRow(bad);
    auto r = vault_->Open("ten_a", "k");
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << "byte " << i;
  }
  store::SecretRow cut = good;
  cut.sealed.resize(10);
  WriteRow(cut);
  EXPECT_FALSE(vault_->Open("ten_a", "k").ok());
  WriteRow(good);
  EXPECT_EQ(*vault_->Open("ten_a", "k"), "the value");
}

TEST_F(VaultTest, ASealedValueCopiedToAnotherTenantOrNameDoesNotOpen) {
  ASSERT_TRUE(vault_->Put("ten_a", "k", "the value").ok());
  store::SecretRow row = Row("ten_a", "k");
  store::SecretRow other_tenant = row;
  other_tenant.tenant_id = "ten_b";
  WriteRow(other_tenant);
  EXPECT_EQ(vault_->Open("ten_b", "k").status().code(), StatusCode::kFailedPrecondition);
  store::SecretRow other_name = row;
  other_name.name = "k2";
  WriteRow(other_name);
  EXPECT_EQ(vault_->Open("ten_a", "k2").status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(*vault_->Open("ten_a", "k"), "the value");
}

TEST_F(VaultTest, TheDatabaseNeverHoldsThePlaintext) {
  const std::string value = "plaintext-that-must-not-be-stored-0123456789";
  ASSERT_TRUE(vault_->Put("ten_a", "k", value).ok());
  ASSERT_TRUE(vault_->Put("ten_a", "k2", value).ok());
  ASSERT_EQ(*vault_->Open("ten_a", "k"), value);
  vault_.reset();
  store_->Close();
  store_.reset();
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    std::string bytes = ReadFile(entry.path().string());
    EXPECT_EQ(bytes.find(value), std::string::npos) << entry.path();
    EXPECT_EQ(bytes.find("must-not-be-stored"), std::string::npos) << entry.path();
  }
}

TEST_F(VaultTest, AnotherMasterKeyOpensNothing) {
  ASSERT_TRUE(vault_->Put("ten_a", "k", "the value").ok());
  auto other = OpenVault((dir_ / "other.key").string());
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->Open("ten_a", "k").status().code(), StatusCode::kFailedPrecondition);
  // The same key file opens it again after a reload.
  vault_.reset();
  vault_ = OpenVault(KeyPath());
  EXPECT_EQ(*vault_->Open("ten_a", "k"), "the value");
}

TEST_F(VaultTest, TheMasterKeyFileIsPrivateAndAReadableOneIsRefused) {
  struct stat st {};
  ASSERT_EQ(stat(KeyPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(chmod(KeyPath().c_str(), 0640), 0);
  auto v = Vault::Load(store_.get(), &clock_, {KeyPath()});
  EXPECT_EQ(v.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(v.status().message().find("0600"), std::string::npos);
  ASSERT_EQ(chmod(KeyPath().c_str(), 0600), 0);
  // A file that is not a key.
  const std::string junk = (dir_ / "junk.key").string();
  { std::ofstream(junk) << "not a key\n"; }
  ASSERT_EQ(chmod(junk.c_str(), 0600), 0);
  EXPECT_EQ(Vault::Load(store_.get(), &clock_, {junk}).status().code(),
            StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace agentd::identity
