#include "runtime/common/secret.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "runtime/common/logging.h"
#include "runtime/common/tenants.h"

namespace kvpool {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("secret");
  return l;
}

constexpr std::size_t kNewSecretBytes = 32;

std::string errno_text(int err) { return std::strerror(err); }

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Where the path came from, for error messages.
std::string origin(const std::string& explicit_path) {
  if (!explicit_path.empty()) return "given explicitly";
  const char* env = std::getenv(kSecretFileEnv);
  if (env != nullptr && env[0] != '\0') return std::string("from ") + kSecretFileEnv;
  return "the default path";
}

std::string how_to_point() { return std::string("pass --secret-file (secret_file) or set ") + kSecretFileEnv; }

// mkdir -p with mode 0700 for what it creates; existing directories are
// left as they are.
Status make_parents(const std::string& path) {
  for (std::size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string dir = path.substr(0, pos);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      int err = errno;
      StatusCode code =
          (err == EACCES || err == EROFS || err == EPERM) ? StatusCode::kFailedPrecondition : StatusCode::kInternal;
      return Status(code, "cannot create directory " + dir + " for the secret file: " + errno_text(err));
    }
  }
  return Status();
}

std::string to_hex(std::string_view bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

// Creates `path` with a new secret unless something is there already.
// Returns true when this call made it, false when it existed.
Result<bool> create_if_absent(const std::string& path, const std::string& tenant = {}) {
  if (path.empty() || path.back() == '/') {
    return make_error(StatusCode::kInvalidArgument, "secret file path '" + path + "' names no file");
  }
  if (Status s = make_parents(path); !s.ok()) return tl::unexpected(s);
  auto random = random_bytes(kNewSecretBytes);
  if (!random) return tl::unexpected(random.error());
  std::string contents = tenant.empty() ? std::string() : std::string(kTenantCredentialTag) + " " + tenant + " ";
  contents += to_hex(*random);
  contents += "\n";
  OPENSSL_cleanse(random->data(), random->size());

  // Written in full under a temporary name in the same directory, then
  // linked into place: link() never replaces an existing file, so of several
  // processes creating at once exactly one wins, and nobody ever sees a
  // partly written secret.
  std::string dir = path.substr(0, path.rfind('/') + 1);
  if (dir.empty()) dir = "./";
  std::string tmp = dir + ".kvpool-secret.XXXXXX";
  std::vector<char> tmpl(tmp.begin(), tmp.end());
  tmpl.push_back('\0');
  int fd = ::mkstemp(tmpl.data());  // mode 0600
  if (fd < 0) {
    int err = errno;
    OPENSSL_cleanse(contents.data(), contents.size());
    StatusCode code =
        (err == EACCES || err == EROFS || err == EPERM) ? StatusCode::kFailedPrecondition : StatusCode::kInternal;
    return make_error(code, "cannot create a secret file in " + dir + ": " + errno_text(err));
  }
  tmp.assign(tmpl.data());
  Status failed;
  if (::fchmod(fd, 0600) != 0) failed = Status(StatusCode::kInternal, "chmod " + tmp + ": " + errno_text(errno));
  std::size_t done = 0;
  while (failed.ok() && done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed = Status(StatusCode::kInternal, "write " + tmp + ": " + errno_text(errno));
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  OPENSSL_cleanse(contents.data(), contents.size());
  if (failed.ok() && ::fsync(fd) != 0)
    failed = Status(StatusCode::kInternal, "fsync " + tmp + ": " + errno_text(errno));
  ::close(fd);
  bool created = false;
  if (failed.ok()) {
    if (::link(tmp.c_str(), path.c_str()) == 0) {
      created = true;
    } else if (errno != EEXIST) {
      failed = Status(StatusCode::kInternal, "link " + tmp + " to " + path + ": " + errno_text(errno));
    }
  }
  ::unlink(tmp.c_str());
  if (!failed.ok()) return tl::unexpected(failed);
  return created;
}

// Opens the secret file for reading once it is a regular file only its owner
// may access; the caller closes the descriptor.
Result<int> open_secret_file(const std::string& path, const std::string& from) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return make_error(StatusCode::kFailedPrecondition,
                        "no cluster secret file at " + path + " (" + from +
                            "): copy the cluster's secret file there with mode 0600, or " + how_to_point() +
                            " to where it is (kvpool-agent --standalone and kvpool-coordinator create one)");
    }
    if (err == EACCES) {
      return make_error(StatusCode::kFailedPrecondition, "cannot read the secret file " + path + " (" + from +
                                                             "): " + errno_text(err) +
                                                             "; it must be owned by the user running kvpool");
    }
    return make_error(StatusCode::kInternal, "open secret file " + path + ": " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return make_error(StatusCode::kInternal, "stat secret file " + path + ": " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(StatusCode::kFailedPrecondition, "secret file " + path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return make_error(StatusCode::kFailedPrecondition,
                      "secret file " + path + " has mode " + octal_mode(st.st_mode) +
                          ": group or others may access it, so it is refused; run `chmod 600 " + path +
                          "` (and make a new secret if others may have read it)");
  }
  return fd;
}

// Reads the secret file's text, less trailing whitespace, and closes `fd`.
Result<std::string> read_secret_text(int fd, const std::string& path) {
  std::string key(kMaxSecretBytes + 1, '\0');
  std::size_t have = 0;
  for (;;) {
    if (have == key.size()) break;
    ssize_t n = ::read(fd, key.data() + have, key.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      OPENSSL_cleanse(key.data(), key.size());
      return make_error(StatusCode::kInternal, "read secret file " + path + ": " + errno_text(err));
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  ::close(fd);
  while (have > 0 && std::strchr(" \t\r\n", key[have - 1]) != nullptr && key[have - 1] != '\0') --have;
  if (have > kMaxSecretBytes) {
    OPENSSL_cleanse(key.data(), key.size());
    return make_error(
        StatusCode::kFailedPrecondition,
        "secret file " + path + " is longer than " + std::to_string(kMaxSecretBytes) + " bytes: is it the right file?");
  }
  if (have < kMinSecretBytes) {
    OPENSSL_cleanse(key.data(), key.size());
    return make_error(StatusCode::kFailedPrecondition, "secret file " + path + " holds " + std::to_string(have) +
                                                           " bytes; at least " + std::to_string(kMinSecretBytes) +
                                                           " are needed: write a new one, e.g. `(umask 077; openssl "
                                                           "rand -hex 32 > " +
                                                           path + ")`, and copy it to every host");
  }
  std::string exact(key.data(), have);
  OPENSSL_cleanse(key.data(), key.size());
  return exact;
}

// A cluster secret, or a tenant credential (`kvpool-tenant NAME KEY`).
Result<Secret> parse_secret(const std::string& path, std::string exact) {
  std::string_view text(exact);
  if (text.substr(0, kTenantCredentialTag.size() + 1) == std::string(kTenantCredentialTag) + " ") {
    // `kvpool-tenant NAME KEY`: one line, three fields.
    std::string_view rest = text.substr(kTenantCredentialTag.size() + 1);
    std::size_t sp = rest.find(' ');
    std::string name(rest.substr(0, sp));
    std::string tenant_key(sp == std::string_view::npos ? std::string_view{} : rest.substr(sp + 1));
    OPENSSL_cleanse(exact.data(), exact.size());
    bool ok = valid_tenant_name(name) && tenant_key.size() >= kMinSecretBytes &&
              tenant_key.find_first_of(" \t\r\n") == std::string::npos;
    if (!ok) {
      OPENSSL_cleanse(tenant_key.data(), tenant_key.size());
      return make_error(StatusCode::kFailedPrecondition,
                        "secret file " + path +
                            " starts like a tenant credential but is not `kvpool-tenant NAME KEY` on one line (NAME "
                            "of [A-Za-z0-9._-], KEY of at least " +
                            std::to_string(kMinSecretBytes) + " bytes): make one with `pooltool secret new --tenant`");
    }
    return Secret(path, std::move(tenant_key), std::move(name));
  }
  return Secret(path, std::move(exact));
}

Result<Secret> read_secret(const std::string& path, const std::string& from) {
  auto fd = open_secret_file(path, from);
  if (!fd) return tl::unexpected(fd.error());
  auto exact = read_secret_text(*fd, path);
  if (!exact) return tl::unexpected(exact.error());
  return parse_secret(path, std::move(*exact));
}

}  // namespace

Secret::~Secret() {
  if (!key_.empty()) OPENSSL_cleanse(key_.data(), key_.size());
}

std::string default_secret_path() {
  if (::geteuid() == 0) return "/etc/kvpool/secret";
  std::string home;
  if (const char* env = std::getenv("HOME"); env != nullptr && env[0] != '\0') {
    home = env;
  } else {
    struct passwd pw {};
    struct passwd* found = nullptr;
    std::vector<char> buf(16384);
    if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr &&
        found->pw_dir != nullptr) {
      home = found->pw_dir;
    }
  }
  if (home.empty()) return {};
  while (home.size() > 1 && home.back() == '/') home.pop_back();
  return home + "/.config/kvpool/secret";
}

std::string secret_path(const std::string& explicit_path) {
  if (!explicit_path.empty()) return explicit_path;
  if (const char* env = std::getenv(kSecretFileEnv); env != nullptr && env[0] != '\0') return env;
  return default_secret_path();
}

Result<Secret> load_secret(const std::string& explicit_path) {
  std::string path = secret_path(explicit_path);
  if (path.empty()) {
    return make_error(StatusCode::kFailedPrecondition,
                      "no secret file: no home directory for the default path; " + how_to_point());
  }
  return read_secret(path, origin(explicit_path));
}

Result<Secret> load_or_create_secret(const std::string& explicit_path, bool* created) {
  if (created != nullptr) *created = false;
  std::string path = secret_path(explicit_path);
  if (path.empty()) {
    return make_error(StatusCode::kFailedPrecondition,
                      "no secret file: no home directory for the default path; " + how_to_point());
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 && errno == ENOENT) {
    auto made = create_if_absent(path);
    if (!made) return tl::unexpected(made.error());
    if (*made) {
      logger()->info("created a new cluster secret at {}: copy it (mode 0600) to every host that joins this pool",
                     path);
      if (created != nullptr) *created = true;
    }
  }
  return read_secret(path, origin(explicit_path));
}

Status create_secret_file(const std::string& path) {
  struct stat st {};
  if (!path.empty() && ::lstat(path.c_str(), &st) == 0) {
    return Status(StatusCode::kAlreadyExists, "secret file " + path + " exists; refusing to overwrite it");
  }
  auto made = create_if_absent(path);
  if (!made) return made.error();
  if (!*made) return Status(StatusCode::kAlreadyExists, "secret file " + path + " exists; refusing to overwrite it");
  return Status();
}

Status create_tenant_secret_file(const std::string& path, const std::string& tenant) {
  if (!valid_tenant_name(tenant)) {
    return Status(StatusCode::kInvalidArgument, "tenant name '" + tenant + "' is not 1..64 of [A-Za-z0-9._-]");
  }
  struct stat st {};
  if (!path.empty() && ::lstat(path.c_str(), &st) == 0) {
    return Status(StatusCode::kAlreadyExists, "secret file " + path + " exists; refusing to overwrite it");
  }
  auto made = create_if_absent(path, tenant);
  if (!made) return made.error();
  if (!*made) return Status(StatusCode::kAlreadyExists, "secret file " + path + " exists; refusing to overwrite it");
  return Status();
}

Result<std::string> random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (n > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    return make_error(StatusCode::kInternal, "no random bytes from OpenSSL (RAND_bytes failed)");
  }
  return out;
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), mac, &len);
  std::string out(reinterpret_cast<const char*>(mac), len);
  OPENSSL_cleanse(mac, sizeof(mac));
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace kvpool
