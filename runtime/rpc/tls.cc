#include "runtime/rpc/tls.h"

#include <openssl/ssl.h>

#include <boost/asio/ssl/error.hpp>
#include <cstring>

#include "runtime/common/secret.h"
#include "runtime/common/tenants.h"
#include "runtime/rpc/frame.h"

namespace kvpool::rpc {
namespace {

constexpr const char* kPskIdentity = "kvpool";
constexpr std::string_view kTenantIdentityPrefix = "kvpool-tenant:";
// Both are SHA-256 suites, the hash OpenSSL's PSK callbacks assume in TLS 1.3.
constexpr const char* kCiphersuites = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

// Where the context keeps its PSK. Not the app data slot: Asio keeps its
// verify callback there and deletes it with the context.
int psk_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

const TlsContext* context_of(SSL* ssl) {
  return static_cast<const TlsContext*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), psk_index()));
}

std::string psk_for(std::string_view key) { return hmac_sha256(key, "kvpool control tls psk v1"); }

unsigned int server_psk(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_psk_len) {
  const TlsContext* t = context_of(ssl);
  if (t == nullptr || identity == nullptr) return 0;
  const std::string* key = nullptr;
  if (std::strcmp(identity, kPskIdentity) == 0) {
    key = &t->psk;
  } else if (auto it = t->tenant_psks.find(std::string_view(identity)); it != t->tenant_psks.end()) {
    key = &it->second;
  }
  if (key == nullptr || key->size() > max_psk_len) return 0;
  std::memcpy(psk, key->data(), key->size());
  return static_cast<unsigned int>(key->size());
}

unsigned int client_psk(SSL* ssl, const char* /*hint*/, char* identity, unsigned int max_identity_len,
                        unsigned char* psk, unsigned int max_psk_len) {
  const TlsContext* t = context_of(ssl);
  if (t == nullptr) return 0;
  const std::string* key = &t->psk;
  if (key->size() > max_psk_len || t->identity.size() + 1 > max_identity_len) return 0;
  std::memcpy(identity, t->identity.c_str(), t->identity.size() + 1);
  std::memcpy(psk, key->data(), key->size());
  return static_cast<unsigned int>(key->size());
}

}  // namespace

Result<std::unique_ptr<TlsContext>> make_tls_context(bool server, std::string_view secret_key, std::string_view tenant,
                                                     const TenantTable* tenants) {
  namespace ssl = boost::asio::ssl;
  auto t = std::make_unique<TlsContext>(server ? ssl::context::tls_server : ssl::context::tls_client);
  t->psk = psk_for(secret_key);
  t->identity = tenant.empty() ? std::string(kPskIdentity) : std::string(kTenantIdentityPrefix) + std::string(tenant);
  if (server && tenants != nullptr) {
    for (const Tenant& tn : tenants->all()) {
      t->tenant_psks.emplace(std::string(kTenantIdentityPrefix) + tn.name, psk_for(tn.key));
    }
  }
  SSL_CTX* native = t->ctx.native_handle();
  if (SSL_CTX_set_min_proto_version(native, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(native, kCiphersuites) != 1) {
    return make_error(StatusCode::kInternal, "OpenSSL refused the TLS 1.3 PSK settings");
  }
  if (psk_index() < 0 || SSL_CTX_set_ex_data(native, psk_index(), t.get()) != 1) {
    return make_error(StatusCode::kInternal, "OpenSSL could not attach the PSK to the TLS context");
  }
  if (server) {
    SSL_CTX_set_psk_server_callback(native, server_psk);
    // Every connection handshakes afresh: no tickets to keep or resume.
    SSL_CTX_set_num_tickets(native, 0);
  } else {
    SSL_CTX_set_psk_client_callback(native, client_psk);
  }
  return t;
}

Status tls_handshake_status(const boost::system::error_code& ec, std::string_view what) {
  if (ec.category() == boost::asio::error::get_ssl_category()) {
    return Status(StatusCode::kPermissionDenied,
                  std::string(what) + ": TLS handshake failed (" + ec.message() +
                      "): the peers do not share the cluster secret, or the peer is not a kvpool TLS endpoint");
  }
  return to_status(ec, what);
}

}  // namespace kvpool::rpc
