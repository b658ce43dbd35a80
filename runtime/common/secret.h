#pragma once
// The cluster secret: the shared key every control connection is
// authenticated with (runtime/rpc/auth.h, SECURITY.md). It never crosses the
// wire; each side proves it knows the secret with an HMAC over fresh nonces.
//
// A secret file holds at least kMinSecretBytes bytes (whitespace at its end
// is ignored), is a regular file and is readable by its owner only (mode
// 0600 or 0400): a file that group or others may read or write is refused.
// New files hold 32 random bytes as 64 hex digits and a newline.
//
// A tenant credential (tenants.h) is a secret file whose one line is
// `kvpool-tenant NAME KEY`: the client authenticates as tenant NAME with KEY
// and is served only that tenant's namespaces. Servers refuse one as their
// secret.
//
// Every component and client finds the file the same way (secret_path):
//   1. an explicit path (--secret-file, ClientOptions::secret_file);
//   2. else the environment variable KVPOOL_SECRET_FILE, if set and not empty;
//   3. else the default: /etc/kvpool/secret for root,
//      ~/.config/kvpool/secret for everyone else.
//
// All functions are thread-safe.

#include <cstddef>
#include <string>
#include <string_view>

#include "kvpool/status.h"

namespace kvpool {

inline constexpr std::size_t kMinSecretBytes = 32;
inline constexpr std::size_t kMaxSecretBytes = 4096;
inline constexpr const char* kSecretFileEnv = "KVPOOL_SECRET_FILE";

// The key and where it came from. The key is wiped from memory when the
// Secret is destroyed.
class Secret {
 public:
  Secret(std::string path, std::string key, std::string tenant = {})
      : path_(std::move(path)), key_(std::move(key)), tenant_(std::move(tenant)) {}
  Secret(const Secret&) = default;
  Secret& operator=(const Secret&) = default;
  Secret(Secret&&) noexcept = default;
  Secret& operator=(Secret&&) noexcept = default;
  ~Secret();

  const std::string& path() const { return path_; }
  std::string_view key() const { return key_; }
  // The tenant a tenant credential names; empty for the cluster secret.
  const std::string& tenant() const { return tenant_; }

 private:
  std::string path_;
  std::string key_;
  std::string tenant_;
};

inline constexpr std::string_view kTenantCredentialTag = "kvpool-tenant";

// /etc/kvpool/secret for root (effective uid 0), else
// $HOME/.config/kvpool/secret (the passwd entry's home when HOME is unset);
// empty when no home directory can be found.
std::string default_secret_path();

// The path the discovery order above gives: `explicit_path` if not empty,
// else $KVPOOL_SECRET_FILE, else default_secret_path().
std::string secret_path(const std::string& explicit_path);

// Reads and checks the secret file that secret_path(explicit_path) names.
// kFailedPrecondition (the message names the path and the fix) when it is
// missing, not a regular file, readable or writable by group or others,
// shorter than kMinSecretBytes or longer than kMaxSecretBytes, or a
// malformed tenant credential;
// kInternal on an I/O error.
Result<Secret> load_secret(const std::string& explicit_path);

// As load_secret, but first creates the file with a new random secret when
// none exists there (creating missing parent directories with mode 0700).
// Race-free: when several processes start at once, every one of them ends up
// with the one secret that was linked into place first. `created` (may be
// null) says whether this call made the file.
Result<Secret> load_or_create_secret(const std::string& explicit_path, bool* created = nullptr);

// Creates a new secret file at `path` (mode 0600, parent directories created
// with mode 0700), for `pooltool secret new PATH`. Never overwrites:
// kAlreadyExists when something is at `path` already. kFailedPrecondition
// when the directory cannot be written, kInternal on other I/O errors or
// when no random bytes are available.
Status create_secret_file(const std::string& path);

// As create_secret_file, but writes a tenant credential for `tenant`
// (kInvalidArgument for a name tenants.h does not accept).
Status create_tenant_secret_file(const std::string& path, const std::string& tenant);

// `n` bytes from OpenSSL's CSPRNG (RAND_bytes); kInternal when it fails.
Result<std::string> random_bytes(std::size_t n);

// HMAC-SHA256 of `data` under `key`: 32 bytes.
std::string hmac_sha256(std::string_view key, std::string_view data);

// Compares in time that depends only on the sizes (CRYPTO_memcmp), so a
// peer cannot learn a MAC byte by byte from response times.
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace kvpool
