#include "runtime/common/tenants.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/common/secret.h"
#include "runtime/common/units.h"

namespace kvpool {
namespace {

// A tenants file is a handful of lines; anything larger is the wrong file.
constexpr std::size_t kMaxTenantsFileBytes = std::size_t{1} << 20;

std::vector<std::string_view> split_ws(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    std::size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

bool valid_tenant_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxTenantNameBytes) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string namespace_hex(NamespaceId id) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

bool Tenant::allows(NamespaceId id, const std::string* model_id) const {
  const std::string hex = namespace_hex(id);
  for (const std::string& p : namespaces) {
    if (p == hex) return true;
    if (model_id != nullptr && ::fnmatch(p.c_str(), model_id->c_str(), 0) == 0) return true;
  }
  return false;
}

TenantTable::~TenantTable() {
  for (Tenant& t : tenants_) OPENSSL_cleanse(t.key.data(), t.key.size());
}

Result<std::string> TenantTable::isolated_owner(NamespaceId id, const std::string* model_id) const {
  std::string owner;
  for (const Tenant& t : tenants_) {
    if (!t.isolated() || !t.allows(id, model_id)) continue;
    if (!owner.empty()) {
      return make_error(StatusCode::kFailedPrecondition,
                        "namespace " + namespace_hex(id) + (model_id ? " ('" + *model_id + "')" : std::string()) +
                            " matches the patterns of two isolated tenants, '" + owner + "' and '" + t.name +
                            "': an isolated tenant's namespaces live in its own regions only, so they must "
                            "not overlap (fix the --tenants file)");
    }
    owner = t.name;
  }
  return owner;
}

bool TenantTable::any_isolated() const {
  for (const Tenant& t : tenants_) {
    if (t.isolated()) return true;
  }
  return false;
}

const Tenant* TenantTable::find(std::string_view name) const {
  for (const Tenant& t : tenants_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<TenantTable> TenantTable::parse(std::string_view text, const std::string& where) {
  TenantTable table;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (std::size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    auto words = split_ws(line);
    if (words.empty()) continue;
    auto bad = [&](const std::string& why) {
      return make_error(StatusCode::kFailedPrecondition,
                        "tenants file " + where + " line " + std::to_string(line_no) + ": " + why +
                            " (expected `tenant NAME KEY namespaces=PATTERN[,PATTERN...] [isolated=SIZE]`)");
    };
    if (words[0] != "tenant") return bad("unknown directive '" + std::string(words[0]) + "'");
    if (words.size() < 4) return bad("too few fields");
    Tenant t;
    t.name = std::string(words[1]);
    if (!valid_tenant_name(t.name)) return bad("tenant name must be 1..64 of [A-Za-z0-9._-]");
    if (table.find(t.name) != nullptr) return bad("tenant '" + t.name + "' is named twice");
    t.key = std::string(words[2]);
    if (t.key.size() < kMinSecretBytes || t.key.size() > kMaxSecretBytes) {
      return bad("tenant '" + t.name + "' has a key of " + std::to_string(t.key.size()) + " bytes; " +
                 std::to_string(kMinSecretBytes) + ".." + std::to_string(kMaxSecretBytes) +
                 " are needed (`pooltool secret new --tenant NAME PATH` makes one)");
    }
    bool have_namespaces = false;
    for (std::size_t i = 3; i < words.size(); ++i) {
      std::string_view w = words[i];
      constexpr std::string_view kIsolated = "isolated";
      if (w.substr(0, kIsolated.size()) == kIsolated) {
        if (t.isolated_bytes != 0) return bad("isolated given twice");
        if (w.size() == kIsolated.size() || w[kIsolated.size()] != '=') {
          return bad("tenant '" + t.name + "': isolated needs the size of its region on each agent (isolated=4GiB)");
        }
        auto size = parse_size(w.substr(kIsolated.size() + 1));
        if (!size) return bad("tenant '" + t.name + "': isolated=: " + size.error().message());
        if (*size < kMinIsolatedBytes) {
          return bad("tenant '" + t.name + "': an isolated region of " + std::to_string(*size) +
                     " bytes is too small (at least 1MiB)");
        }
        t.isolated_bytes = *size;
        continue;
      }
      constexpr std::string_view kNs = "namespaces=";
      if (w.substr(0, kNs.size()) != kNs) return bad("unknown option '" + std::string(w) + "'");
      if (have_namespaces) return bad("namespaces= given twice");
      have_namespaces = true;
      std::string_view list = w.substr(kNs.size());
      while (true) {
        std::size_t comma = list.find(',');
        std::string_view p = list.substr(0, comma);
        if (p.empty()) return bad("an empty namespace pattern");
        t.namespaces.emplace_back(p);
        if (comma == std::string_view::npos) break;
        list = list.substr(comma + 1);
      }
    }
    if (!have_namespaces) return bad("tenant '" + t.name + "' has no namespaces=");
    table.tenants_.push_back(std::move(t));
  }
  return table;
}

Result<TenantTable> TenantTable::load(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    StatusCode code = (err == ENOENT || err == EACCES) ? StatusCode::kFailedPrecondition : StatusCode::kInternal;
    return make_error(code, "cannot open the tenants file " + path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(StatusCode::kFailedPrecondition, "tenants file " + path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return make_error(StatusCode::kFailedPrecondition, "tenants file " + path +
                                                           " may be read or written by group or others, so it is "
                                                           "refused: run `chmod 600 " +
                                                           path + "` (and new tenant keys if others may have read it)");
  }
  std::string text(kMaxTenantsFileBytes + 1, '\0');
  std::size_t have = 0;
  while (have < text.size()) {
    ssize_t n = ::read(fd, text.data() + have, text.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      OPENSSL_cleanse(text.data(), text.size());
      return make_error(StatusCode::kInternal, "read tenants file " + path + ": " + std::strerror(err));
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (have > kMaxTenantsFileBytes) {
    OPENSSL_cleanse(text.data(), text.size());
    return make_error(StatusCode::kFailedPrecondition, "tenants file " + path + " is over 1 MiB: is it the right file?");
  }
  auto table = parse(std::string_view(text.data(), have), path);
  OPENSSL_cleanse(text.data(), text.size());
  return table;
}

Status append_tenant(const std::string& path, const Tenant& tenant) {
  std::string line = "tenant " + tenant.name + " " + tenant.key + " namespaces=";
  for (std::size_t i = 0; i < tenant.namespaces.size(); ++i) line += (i ? "," : "") + tenant.namespaces[i];
  if (tenant.isolated()) line += " isolated=" + std::to_string(tenant.isolated_bytes);
  line += "\n";
  auto self = TenantTable::parse(line, "the new line");
  if (!self) {
    OPENSSL_cleanse(line.data(), line.size());
    return Status(StatusCode::kInvalidArgument, self.error().message());
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    auto existing = TenantTable::load(path);
    if (!existing) return existing.error();
    if (existing->find(tenant.name) != nullptr) {
      OPENSSL_cleanse(line.data(), line.size());
      return Status(StatusCode::kAlreadyExists, "tenants file " + path + " names tenant '" + tenant.name + "' already");
    }
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    OPENSSL_cleanse(line.data(), line.size());
    return Status(StatusCode::kFailedPrecondition, "cannot open the tenants file " + path + ": " + std::strerror(err));
  }
  Status result;
  std::size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      result = Status(StatusCode::kInternal, "write tenants file " + path + ": " + std::strerror(errno));
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (result.ok() && ::fsync(fd) != 0) {
    result = Status(StatusCode::kInternal, "fsync tenants file " + path + ": " + std::strerror(errno));
  }
  ::close(fd);
  OPENSSL_cleanse(line.data(), line.size());
  return result;
}

}  // namespace kvpool
