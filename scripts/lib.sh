# Shared by scripts/demo.sh and scripts/test.sh: install what is missing,
# then configure and build. Source it; do not run it.

KVPOOL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian 12 packages the build, the tests and the benchmarks need.
KVPOOL_PACKAGES=(
  g++ cmake ninja-build pkg-config
  libucx-dev ucx-utils libibverbs-dev
  libboost-dev catch2 libexpected-dev nlohmann-json3-dev
  libspdlog-dev libcli11-dev libxxhash-dev libssl-dev
  util-linux procps iptables
  etcd-server etcd-client
  python3-numpy python3-pytest python3-yaml patchelf
  iperf3 redis-server redis-tools
  clang-14 libclang-rt-14-dev
)

kvpool_install_deps() {
  local missing=()
  for pkg in "${KVPOOL_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  echo "kvpool: installing ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# kvpool_build BUILD_DIR [extra cmake args...]
kvpool_build() {
  local dir="$1"
  shift
  cmake -S "$KVPOOL_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  # Two parallel jobs: the CI machine has 2 cores and 24 GiB.
  cmake --build "$dir" -j "${KVPOOL_BUILD_JOBS:-2}"
}
