# Settings of scripts/server, sourced from the repository root (also by
# tests/api/dev_secrets.rs, which runs these functions in a scratch directory).

# The variables scripts/server decides on may come from .env; real ones win.
KEEL_DOTENV_VARS=(DATABASE_URL PORT OPENAI_API_KEY OPENAI_BASE_URL ADMIN_API_KEY CRON_SECRET)
load_dotenv() {
  [ -f .env ] || return 0
  local pattern key value
  pattern="^($(IFS='|' && echo "${KEEL_DOTENV_VARS[*]}"))=."
  while IFS='=' read -r key value; do
    [ -n "${!key:-}" ] || export "$key=$value"
  done < <(grep -E "$pattern" .env | sed -e 's/"//g' -e "s/'//g")
}

# Development secrets, generated once and kept under .keel/ (git-ignored).
KEEL_DEV_SECRETS=(ADMIN_API_KEY CRON_SECRET)
dev_secrets() {
  local name file
  for name in "${KEEL_DEV_SECRETS[@]}"; do
    if [ -z "${!name:-}" ]; then
      file=".keel/dev-$(echo "$name" | tr 'A-Z_' 'a-z-')"
      mkdir -p .keel
      [ -s "$file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file"
      export "$name=$(cat "$file")"
    fi
  done
}
