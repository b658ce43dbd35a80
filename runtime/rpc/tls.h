#pragma once
// TLS on the control channel, when a server asks for it (auth.h,
// kAuthFlagTls): TLS 1.3 keyed by an external pre-shared key derived from
// the cluster secret, PSK = HMAC-SHA256(secret, "kvpool control tls psk v1"),
// so no certificates are needed and only holders of the secret complete the
// handshake. A tenant (tenants.h) uses a PSK derived the same way from its
// own key, under the PSK identity "kvpool-tenant:NAME", so tenants need
// no cluster secret for TLS either. Encrypts and integrity-protects the hello and every frame after
// it; the UCX data path stays unencrypted (SECURITY.md).

#include <boost/asio/ssl/context.hpp>
#include <boost/system/error_code.hpp>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "kvpool/status.h"
#include "runtime/common/tenants.h"

namespace kvpool::rpc {

// An Asio SSL context set up for PSK-only TLS 1.3, with the key it serves.
// Shared by every connection of one Server or owned by one Client; the
// context is read-only after creation (thread-safe to use from any thread).
struct TlsContext {
  explicit TlsContext(boost::asio::ssl::context::method method) : ctx(method) {}
  // The PSK and identity a client offers, or the server's cluster PSK. Must
  // outlive ctx's use: OpenSSL's callbacks read them.
  std::string psk;
  std::string identity;
  std::map<std::string, std::string, std::less<>> tenant_psks;  // server: by identity
  boost::asio::ssl::context ctx;
};

// kInternal when OpenSSL refuses the settings. A client passes its tenant's
// name (empty: the cluster secret); a server passes every tenant it accepts
// (may be null).
Result<std::unique_ptr<TlsContext>> make_tls_context(bool server, std::string_view secret_key,
                                                     std::string_view tenant = {},
                                                     const TenantTable* tenants = nullptr);

// A failed TLS handshake as a Status: an alert from TLS itself (the peer
// derived another key: the secrets differ) is kPermissionDenied; a network
// error maps as to_status() does.
Status tls_handshake_status(const boost::system::error_code& ec, std::string_view what);

}  // namespace kvpool::rpc
