#pragma once
// The authentication handshake of the control protocol (frame.h): mutual
// challenge-response with HMAC-SHA256 under the cluster secret
// (runtime/common/secret.h). The secret never crosses the wire; both sides
// contribute a fresh 32-byte nonce (RAND_bytes), so a recorded handshake is
// useless on a new connection.
//
//   server -> client  challenge:  scheme, flags, Ns
//   client -> server  hello:      ..., auth = scheme, Nc, Mc
//                     Mc = HMAC(K, "kvpool auth v1 client" | challenge | Nc | hello)
//   server -> client  hello reply: ..., auth = Ms
//                     Ms = HMAC(K, "kvpool auth v1 server" | challenge | Nc | hello | reply)
//
// With kAuthFlagTls in the challenge, the client and the server run a TLS
// 1.3 handshake right after the challenge (tls.h), keyed by a pre-shared key
// derived from the secret, and the hello and everything after it travel
// inside TLS. The flag is in both MACs, so stripping it is detected (and a
// server that asked for TLS never accepts a plaintext hello).
//
// The server checks Mc before it answers anything (a wrong one gets a
// kPermissionDenied error reply and the connection closes); the client
// checks Ms before it uses the connection. Distinct labels keep one side's
// MAC from ever passing as the other's. MACs are compared in constant time.
//
// Tenants (tenants.h): a client holding a tenant credential sends scheme
// kAuthHmacSha256Tenant with its tenant's name in the proof, and both MACs
// are keyed by the tenant's key and cover the name (distinct labels), so
// the server learns which tenant without the key crossing the wire, and a
// proof for one tenant never passes as another's or as the cluster's.
//
// What it does not do: it authenticates the two ends at the start; it does
// not encrypt or sign the frames after it (SECURITY.md).

#include <cstdint>
#include <string>
#include <string_view>

#include "kvpool/status.h"
#include "runtime/rpc/frame.h"

namespace kvpool::rpc {

inline constexpr std::uint8_t kAuthHmacSha256 = 1;
// As kAuthHmacSha256, keyed by a tenant's key; the proof names the tenant.
inline constexpr std::uint8_t kAuthHmacSha256Tenant = 2;
inline constexpr std::size_t kAuthNonceBytes = 32;
inline constexpr std::size_t kAuthMacBytes = 32;

// Challenge flag: the rest of the connection runs inside TLS.
inline constexpr std::uint8_t kAuthFlagTls = 1u << 0;

// The payload of the kAuthChallenge frame.
struct AuthChallenge {
  std::uint8_t scheme = kAuthHmacSha256;
  std::uint8_t flags = 0;
  std::string server_nonce;
};
std::string encode_auth_challenge(const AuthChallenge& challenge);
// kInvalidArgument on a malformed payload, an unknown scheme or flag, or a
// nonce that is not kAuthNonceBytes long.
Result<AuthChallenge> decode_auth_challenge(std::string_view payload);

// The hello's auth field. `tenant` is on the wire only with
// kAuthHmacSha256Tenant (and must then be a valid tenant name).
struct ClientProof {
  std::uint8_t scheme = kAuthHmacSha256;
  std::string client_nonce;
  std::string mac;
  std::string tenant;
};
std::string encode_client_proof(const ClientProof& proof);
// kInvalidArgument on a malformed payload, an unknown scheme, or a nonce or
// MAC of the wrong length.
Result<ClientProof> decode_client_proof(std::string_view payload);

// Mc: what the client sends, over the hello's version, role and id (not its
// auth field); with a tenant, under the tenant's key and over its name.
std::string client_mac(std::string_view key, const AuthChallenge& challenge, std::string_view client_nonce,
                       const Hello& hello, std::string_view tenant = {});
// Ms: what the server sends, over the hello and the reply's role, id and
// version (not its auth field); `tenant` as for client_mac.
std::string server_mac(std::string_view key, const AuthChallenge& challenge, std::string_view client_nonce,
                       const Hello& hello, const HelloReply& reply, std::string_view tenant = {});

}  // namespace kvpool::rpc
