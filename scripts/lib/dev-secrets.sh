# shellcheck shell=bash
# Settings of scripts/server, sourced from the repository root (also by
# tests/api/dev_secrets.rs, which runs these functions in a scratch directory).

# The variables scripts/server decides on may come from .env; real ones win.
KEEL_DOTENV_VARS=(DATABASE_URL PORT OPENAI_API_KEY OPENAI_BASE_URL ADMIN_API_KEY CRON_SECRET ENCRYPTION_KEY METRICS_TOKEN)
load_dotenv() {
  [ -f .env ] || return 0
  local pattern key value
  pattern="^($(IFS='|' && echo "${KEEL_DOTENV_VARS[*]}"))=."
  while IFS='=' read -r key value; do
    [ -n "${!key:-}" ] || export "$key=$value"
  done < <(grep -E "$pattern" .env | sed -e 's/"//g' -e "s/'//g")
}

# Development secrets, generated once and kept under .keel/ (git-ignored),
# readable by their owner only: every route that needs one works on a fresh
# checkout (without ENCRYPTION_KEY and METRICS_TOKEN, webhooks and metrics
# answer 503). Each is 32 random bytes as 64 hex characters, which is also the
# form ENCRYPTION_KEY requires. A value from the environment or .env wins and
# is never written to .keel/.
KEEL_DEV_SECRETS=(ADMIN_API_KEY CRON_SECRET ENCRYPTION_KEY METRICS_TOKEN)
dev_secrets() {
  local name file
  for name in "${KEEL_DEV_SECRETS[@]}"; do
    if [ -z "${!name:-}" ]; then
      file=".keel/dev-$(echo "$name" | tr 'A-Z_' 'a-z-')"
      mkdir -p .keel
      [ -s "$file" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
      # Files written by older checkouts were world-readable.
      chmod 600 "$file"
      export "$name=$(cat "$file")"
    fi
  done
}
