#!/usr/bin/env bash
# Builds or installs every piece of the local cluster rig, cached by version under
# $TIDESCALE_RIG_CACHE (default ~/.cache/tidescale-rig). A piece already built is
# not touched again, so a warm run takes a second or two.
#
#   tests/rig/build/build.sh [all|kubernetes|etcd|helm|kafka|rabbitmq|redis|postgresql|prometheus|nats|elasticmq|azurite]
#   tests/rig/build/build.sh keda   # only for make bench-keda; not part of all
#   TIDESCALE_RIG_KUBERNETES_VERSION=v1.30.14 tests/rig/build/build.sh kubernetes
#
# Prints one line per piece; on a missing prerequisite, one line naming it and how
# to get it, and exit status 2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# Another Kubernetes beside the default one, built and cached the same way (make test-k8s-oldest
# sets it to KUBERNETES_OLDEST_VERSION); the rig's control plane reads the same variable.
KUBERNETES_VERSION=${TIDESCALE_RIG_KUBERNETES_VERSION:-$KUBERNETES_VERSION}
cache=${TIDESCALE_RIG_CACHE:-$HOME/.cache/tidescale-rig}
mkdir -p "$cache"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

die() { echo "rig: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "missing '$1': $2"; }
say() { echo "rig: $*"; }

# Runs "$@" with its output in a log; on failure prints the log's tail and a hint.
logged() {
  local log=$1 hint=$2; shift 2
  if ! "$@" >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    die "$hint (full log: $log)"
  fi
}

go_prereq() {
  need go "install Go >= 1.26 (https://go.dev/dl or the distribution's golang package)"
  local v; v=$(go env GOVERSION); v=${v#go}
  case "$v" in 1.2[6-9]*|1.[3-9]*) ;; *) die "Go $v is too old: Kubernetes ${KUBERNETES_VERSION} needs Go >= 1.26";; esac
}

build_etcd() {
  local dest="$cache/etcd-$ETCD_VERSION"
  [ -x "$dest/bin/etcd" ] && { say "etcd $ETCD_VERSION cached"; return; }
  go_prereq
  say "building etcd $ETCD_VERSION (Go module go.etcd.io/etcd/server/v3) ..."
  local src="$cache/src/etcd-$ETCD_VERSION"; rm -rf "$src"; mkdir -p "$src"
  cat >"$src/main.go" <<'GO'
// etcd entry point: the server module exposes etcdmain but no main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$src" && printf 'module tidescale.local/etcd\n\ngo 1.26\n' >go.mod &&
    logged "$src/get.log" "could not fetch go.etcd.io/etcd/server/v3@$ETCD_VERSION from the Go module proxy: check GOPROXY and the network" \
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
    logged "$src/tidy.log" "go mod tidy failed for etcd" go mod tidy &&
    logged "$src/build.log" "etcd build failed" go build -trimpath -ldflags "-s -w" -o "$dest.tmp/bin/etcd" .)
  mv "$dest.tmp" "$dest"
  say "etcd $ETCD_VERSION built"
}

build_kubernetes() {
  [[ $KUBERNETES_VERSION =~ ^v1\.[0-9]+\.[0-9]+$ ]] \
    || die "Kubernetes version '$KUBERNETES_VERSION' is not of the form v1.<minor>.<patch>, like $KUBERNETES_OLDEST_VERSION"
  local dest="$cache/kubernetes-$KUBERNETES_VERSION"
  [ -x "$dest/bin/kube-apiserver" ] && [ -x "$dest/bin/kube-controller-manager" ] && [ -x "$dest/bin/kubectl" ] \
    && { say "kubernetes $KUBERNETES_VERSION cached"; return; }
  go_prereq
  say "building kube-apiserver, kube-controller-manager, kubectl $KUBERNETES_VERSION (a cold build takes tens of minutes on 2 cores) ..."
  local src="$cache/src/kubernetes-$KUBERNETES_VERSION"; rm -rf "$src"; mkdir -p "$src"
  local gomod
  gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p') \
    || die "could not fetch k8s.io/kubernetes@$KUBERNETES_VERSION from the Go module proxy: check GOPROXY and the network"
  [ -f "$gomod" ] || die "go mod download gave no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION"
  # Staging modules are required as v0.0.0 and replaced by local paths upstream;
  # here each is pinned to its published tag v0.<minor>.<patch>.
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  {
    printf 'module tidescale.local/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
    awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { printf "\t%s => %s %s\n", $1, $1, V }' V="$staging_version" "$gomod"
    printf ')\n'
  } >"$src/go.mod"
  local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl"
  # Each package at the version asked for: a bare `go get` would upgrade k8s.io/kubernetes to the
  # newest release the proxy has.
  local major=${KUBERNETES_VERSION#v}; major=${major%%.*}
  local minor=${KUBERNETES_VERSION#v*.}; minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  (cd "$src" &&
    logged "$src/get.log" "could not resolve Kubernetes $KUBERNETES_VERSION modules from the Go module proxy" \
      go get $(printf '%s@'"$KUBERNETES_VERSION"' ' $pkgs) &&
    logged "$src/build.log" "Kubernetes build failed" \
      go build -trimpath -ldflags "$ldflags" -o "$dest.tmp/bin/" $pkgs)
  mv "$dest.tmp" "$dest"
  say "kubernetes $KUBERNETES_VERSION built"
}

build_helm() {
  local dest="$cache/helm-$HELM_VERSION"
  [ -x "$dest/bin/helm" ] && { say "helm $HELM_VERSION cached"; return; }
  go_prereq
  say "building helm $HELM_VERSION (Go module helm.sh/helm/v3/cmd/helm) ..."
  mkdir -p "$cache/src"
  logged "$cache/src/helm-$HELM_VERSION.log" "could not build helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    env GOBIN="$dest.tmp/bin" go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$dest.tmp" "$dest"
  say "helm $HELM_VERSION built"
}

install_kafka() {
  local dest="$cache/kafka-$SCALA_VERSION-$KAFKA_VERSION"
  [ -f "$dest/classpath" ] && { say "kafka $KAFKA_VERSION cached"; return; }
  need java "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
  need mvn "install Maven (Debian: apt-get install maven)"
  say "fetching kafka_$SCALA_VERSION $KAFKA_VERSION and its dependencies from Maven Central ..."
  mkdir -p "$dest.tmp/lib"
  cat >"$dest.tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tidescale.rig</groupId><artifactId>kafka</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$SCALA_VERSION</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
  logged "$dest.tmp/mvn.log" "could not fetch Kafka $KAFKA_VERSION from Maven Central" \
    mvn -B -q -f "$dest.tmp/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dest.tmp/lib" -DincludeScope=runtime
  (cd "$dest.tmp/lib" && ls "$PWD"/*.jar | tr '\n' ':' | sed "s|$dest.tmp|$dest|g" >"$dest.tmp/classpath")
  mv "$dest.tmp" "$dest"
  say "kafka $KAFKA_VERSION installed"
}

install_elasticmq() {
  local dest="$cache/elasticmq-$ELASTICMQ_VERSION"
  [ -f "$dest/classpath" ] && { say "elasticmq $ELASTICMQ_VERSION cached"; return; }
  need java "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
  need mvn "install Maven (Debian: apt-get install maven)"
  say "fetching elasticmq-server_$SCALA_VERSION $ELASTICMQ_VERSION and its dependencies from Maven Central ..."
  mkdir -p "$dest.tmp/lib"
  cat >"$dest.tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tidescale.rig</groupId><artifactId>elasticmq</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.elasticmq</groupId><artifactId>elasticmq-server_$SCALA_VERSION</artifactId><version>$ELASTICMQ_VERSION</version></dependency>
  </dependencies>
</project>
POM
  logged "$dest.tmp/mvn.log" "could not fetch ElasticMQ $ELASTICMQ_VERSION from Maven Central" \
    mvn -B -q -f "$dest.tmp/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dest.tmp/lib" -DincludeScope=runtime
  (cd "$dest.tmp/lib" && ls "$PWD"/*.jar | tr '\n' ':' | sed "s|$dest.tmp|$dest|g" >"$dest.tmp/classpath")
  mv "$dest.tmp" "$dest"
  say "elasticmq $ELASTICMQ_VERSION installed"
}

install_azurite() {
  local dest="$cache/azurite-$AZURITE_VERSION"
  [ -x "$dest/node_modules/.bin/azurite-queue" ] && { say "azurite $AZURITE_VERSION cached"; return; }
  need node "install Node.js 18+ (Debian: apt-get install nodejs npm)"
  need npm "install npm (Debian: apt-get install npm)"
  say "installing azurite $AZURITE_VERSION from the npm registry ..."
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  logged "$dest.tmp/npm.log" "could not install azurite@$AZURITE_VERSION from the npm registry" \
    npm install --prefix "$dest.tmp" --no-audit --no-fund --omit=dev "azurite@$AZURITE_VERSION"
  mv "$dest.tmp" "$dest"
  say "azurite $AZURITE_VERSION installed"
}

install_rabbitmq() {
  if command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    say "rabbitmq-server installed"; return
  fi
  need apt-get "install RabbitMQ by hand (rabbitmq-server with the rabbitmq_management plugin)"
  [ "$(id -u)" = 0 ] || die "rabbitmq-server is missing and installing it needs root: apt-get install rabbitmq-server"
  say "installing rabbitmq-server from Debian ..."
  logged "$cache/apt.log" "apt-get could not install rabbitmq-server: check the Debian mirror" \
    bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server iproute2'
  # The Debian package starts a system broker; the rig runs its own, so stop it.
  (systemctl disable --now rabbitmq-server 2>/dev/null || service rabbitmq-server stop 2>/dev/null || true) >/dev/null
  say "rabbitmq-server installed"
}

# Debian's redis-server (with redis-cli) and postgresql: the rig runs its own instances in its run
# folder (tests/rig/redis.py, tests/rig/postgresql.py); the system services are stopped.
install_debian_server() {
  local package=$1 binary=$2 service=$3
  if [ -x "$binary" ]; then say "$package installed"; return; fi
  need apt-get "install $package by hand (Debian's $package package)"
  [ "$(id -u)" = 0 ] || die "$package is missing and installing it needs root: apt-get install $package"
  say "installing $package from Debian ..."
  # policy-rc.d keeps the package's service from starting at all while it installs.
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
  local installed=0
  (logged "$cache/apt-$package.log" "apt-get could not install $package: check the Debian mirror" \
    bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $package") &&
    installed=1
  if [ "$had_policy" = 0 ]; then rm -f "$policy"; fi
  [ "$installed" = 1 ] || exit 2  # logged has said why
  (systemctl disable --now "$service" 2>/dev/null || service "$service" stop 2>/dev/null || true) >/dev/null
  [ -x "$binary" ] || die "$package installed but $binary is missing"
  say "$package installed"
}
install_redis() { install_debian_server redis-server /usr/bin/redis-server redis-server; }
install_postgresql() {
  install_debian_server postgresql "/usr/lib/postgresql/$POSTGRESQL_MAJOR/bin/postgres" postgresql
}

install_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    say "prometheus installed"; return
  fi
  need apt-get "install Prometheus by hand (the prometheus and promtool binaries on PATH)"
  [ "$(id -u)" = 0 ] || die "prometheus is missing and installing it needs root: apt-get install prometheus"
  say "installing prometheus from Debian ..."
  logged "$cache/apt-prometheus.log" "apt-get could not install prometheus: check the Debian mirror" \
    bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends prometheus'
  # The Debian package starts a system server on :9090; the rig runs its own, so stop it.
  (systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true) >/dev/null
  say "prometheus installed"
}

build_nats() {
  local dest="$cache/nats-server-$NATS_SERVER_VERSION"
  [ -x "$dest/bin/nats-server" ] && { say "nats-server $NATS_SERVER_VERSION cached"; return; }
  go_prereq
  say "building nats-server $NATS_SERVER_VERSION (Go module github.com/nats-io/nats-server/v2) ..."
  mkdir -p "$cache/src"
  logged "$cache/src/nats-server-$NATS_SERVER_VERSION.log" \
    "could not build github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION from the Go module proxy" \
    env GOBIN="$dest.tmp/bin" go install -trimpath -ldflags "-s -w" \
      "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
  mv "$dest.tmp" "$dest"
  say "nats-server $NATS_SERVER_VERSION built"
}

# KEDA's operator and metrics adapter, for `make bench-keda` only (not part of `all`: its build
# pulls every cloud SDK KEDA's scalers use). Built from the module cache's copy of
# github.com/kedacore/keda/v2 (its own go.mod and go.sum), with its CRDs copied beside the binaries.
build_keda() {
  local dest="$cache/keda-$KEDA_VERSION"
  [ -x "$dest/bin/keda-operator" ] && [ -x "$dest/bin/keda-adapter" ] && [ -d "$dest/crd" ] \
    && { say "keda $KEDA_VERSION cached"; return; }
  go_prereq
  say "building keda-operator and keda-adapter $KEDA_VERSION (Go module github.com/kedacore/keda/v2; a cold build takes tens of minutes on 2 cores) ..."
  mkdir -p "$cache/src"
  local moddir
  moddir=$(cd "$cache/src" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p') \
    || die "could not fetch github.com/kedacore/keda/v2@$KEDA_VERSION from the Go module proxy: check GOPROXY and the network"
  [ -d "$moddir/cmd/operator" ] || die "go mod download gave no source tree for github.com/kedacore/keda/v2@$KEDA_VERSION"
  # The module cache is read-only; the build may need to write go.sum entries.
  local src="$cache/src/keda-$KEDA_VERSION"; rm -rf "$src" "$dest.tmp"; mkdir -p "$src" "$dest.tmp/bin" "$dest.tmp/crd"
  cp -r "$moddir/." "$src/"; chmod -R u+w "$src"
  local ldflags="-s -w -X=github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v} -X=github.com/kedacore/keda/v2/version.GitCommit=$KEDA_VERSION"
  (cd "$src" &&
    logged "$src/build-operator.log" "KEDA operator build failed" \
      env GOFLAGS="$GOFLAGS -mod=mod" CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dest.tmp/bin/keda-operator" ./cmd/operator &&
    logged "$src/build-adapter.log" "KEDA metrics adapter build failed" \
      env GOFLAGS="$GOFLAGS -mod=mod" CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dest.tmp/bin/keda-adapter" ./cmd/adapter)
  cp "$src"/config/crd/bases/*.yaml "$dest.tmp/crd/"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
  say "keda $KEDA_VERSION built"
}

# One build at a time per cache: two sessions (or a test and `make demo`) starting
# together would otherwise wreck each other's half-built pieces.
# KEDA shares nothing with the other pieces and has its own lock, so its long build does not hold
# up the rest of the rig (nor waits for it).
if [ "${1:-all}" = keda ]; then lock="$cache/.build-keda.lock"; else lock="$cache/.build.lock"; fi
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 7200 9 || die "another build has held $lock for two hours"
fi

case "${1:-all}" in
  all) install_rabbitmq; install_redis; install_postgresql; install_prometheus; install_kafka; install_elasticmq; install_azurite; build_nats; build_etcd; build_helm; build_kubernetes ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  kafka) install_kafka ;;
  rabbitmq) install_rabbitmq ;;
  redis) install_redis ;;
  postgresql) install_postgresql ;;
  prometheus) install_prometheus ;;
  nats) build_nats ;;
  elasticmq) install_elasticmq ;;
  azurite) install_azurite ;;
  keda) build_keda ;;
  *) die "unknown piece '$1': expected all, kubernetes, etcd, helm, kafka, rabbitmq, redis, postgresql, prometheus, nats, elasticmq, azurite or keda" ;;
esac
