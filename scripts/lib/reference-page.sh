#!/usr/bin/env bash
# The API reference page's renderer, Swagger UI (npm `swagger-ui-dist`,
# pinned), copied into public/reference/swagger-ui/ from the package npm
# installs into .keel/node (npm checks the tarball against the registry's
# integrity hash).
#
# Vendored, not fetched at run time: Vercel serves public/ as it is (no build
# step), and the page must load nothing from another origin.
#   bash scripts/lib/reference-page.sh          copy the pinned files in
#   bash scripts/lib/reference-page.sh --check  fail unless the committed
#                                               files are exactly those
set -euo pipefail
cd "$(dirname "$0")/../.."

SWAGGER_UI_VERSION=5.35.0
FILES=(swagger-ui-bundle.js swagger-ui.css swagger-ui-bundle.js.LICENSE.txt LICENSE NOTICE)
package=.keel/node/node_modules/swagger-ui-dist
vendored=public/reference/swagger-ui

if [ "$(node -p "require('./$package/package.json').version" 2>/dev/null)" != "$SWAGGER_UI_VERSION" ]; then
  npm install --silent --no-audit --no-fund --prefix .keel/node "swagger-ui-dist@$SWAGGER_UI_VERSION" >&2
fi

if [ "${1:-}" = --check ]; then
  wrong=""
  for file in "${FILES[@]}"; do
    cmp -s "$package/$file" "$vendored/$file" || wrong="$wrong $file"
  done
  for path in "$vendored"/*; do
    [[ " ${FILES[*]} " == *" ${path##*/} "* ]] || wrong="$wrong ${path##*/}"
  done
  if [ -n "$wrong" ]; then
    echo "public/reference/swagger-ui/ is not swagger-ui-dist $SWAGGER_UI_VERSION (wrong or extra:$wrong); run bash scripts/lib/reference-page.sh" >&2
    exit 1
  fi
  exit 0
fi

rm -rf "$vendored"
mkdir -p "$vendored"
for file in "${FILES[@]}"; do
  cp "$package/$file" "$vendored/$file"
done
echo "public/reference/swagger-ui/: swagger-ui-dist $SWAGGER_UI_VERSION" >&2
