#!/usr/bin/env bash
# Checks a running dev/keycloak.sh instance against what Stint expects from
# the stint realm: discovery, the stint-portal service account and its Admin
# REST API rights, the client settings, and the claims in a user's tokens.
# Reads the same KEYCLOAK_PORT, STINT_PUBLIC_URL and STINT_CLIENT_SECRET
# variables as dev/keycloak.sh. Exits 1 when any check fails.
#
# The POST and DELETE check adds db-admin to alice and removes it again. If
# the script stops between the two, alice keeps db-admin until it is removed
# or the database is reset (dev/keycloak.sh reset).
set -euo pipefail

KEYCLOAK_PORT="${KEYCLOAK_PORT:-8180}"
STINT_CLIENT_SECRET="${STINT_CLIENT_SECRET:-stint-dev-secret}"
STINT_PUBLIC_URL="${STINT_PUBLIC_URL:-http://127.0.0.1:3000}"
STINT_PUBLIC_URL="${STINT_PUBLIC_URL%/}"

readonly BASE_URL="http://127.0.0.1:$KEYCLOAK_PORT"
readonly REALM_URL="$BASE_URL/realms/stint"
readonly ADMIN_URL="$BASE_URL/admin/realms/stint"
readonly TOKEN_URL="$REALM_URL/protocol/openid-connect/token"
readonly CLIENT_ID=stint-portal
readonly REDIRECT_URI="$STINT_PUBLIC_URL/auth/callback"

for tool in curl jq openssl; do
  command -v "$tool" >/dev/null || {
    echo "keycloak-smoke.sh: error: $tool not found: install it (apt-get install $tool)" >&2
    exit 1
  }
done

passed=0
failed=0
work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

# Records one check: $1 is its description, the rest is a command that
# succeeds when the check passes. The command's output is printed under the
# FAILED line.
check() {
  local description="$1" output
  shift
  if output="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    echo "ok     $description"
  else
    failed=$((failed + 1))
    echo "FAILED $description"
    [[ -z "$output" ]] || printf '%s\n' "$output"
  fi
}

equals() {
  [[ "$1" == "$2" ]] || {
    echo "       expected: $2" >&2
    echo "       actual:   $1" >&2
    return 1
  }
}

# Succeeds when the JSON array in $1 contains the string $2.
contains() {
  jq -e --arg item "$2" 'index($item) != null' <<<"$1" >/dev/null || {
    echo "       $2 not in $1" >&2
    return 1
  }
}

# Prints the decoded payload of the JWT in $1.
jwt_payload() {
  jq -R 'split(".")[1] | gsub("-"; "+") | gsub("_"; "/")
    | . + ("=" * ((4 - length % 4) % 4)) | @base64d | fromjson' <<<"$1"
}

# Sends an Admin REST API request as the service account and prints the
# HTTP status. The response body goes to $work_dir/body. $1 is the method,
# $2 the path under the realm and $3 an optional JSON request body.
admin_request() {
  local args=(-s -o "$work_dir/body" -w '%{http_code}' -X "$1"
    -H "Authorization: Bearer $service_token" "$ADMIN_URL$2")
  if [[ $# -ge 3 ]]; then
    args+=(-H 'Content-Type: application/json' --data "$3")
  fi
  curl "${args[@]}"
}

base64url() {
  openssl base64 -A | tr '+/' '-_' | tr -d '='
}

# Logs $1 in with password $2 through the authorization code flow with PKCE,
# as a browser would, and prints the token response. The redirect to the
# portal is not followed, because only its code parameter is needed.
login_tokens() {
  local username="$1" password="$2"
  local cookies="$work_dir/cookies-$username" verifier challenge state form action location code
  verifier="$(openssl rand 48 | base64url)"
  challenge="$(printf '%s' "$verifier" | openssl dgst -binary -sha256 | base64url)"
  state="$(openssl rand 16 | base64url)"

  form="$(curl -s -c "$cookies" -b "$cookies" -G "$REALM_URL/protocol/openid-connect/auth" \
    --data-urlencode "client_id=$CLIENT_ID" \
    --data-urlencode "redirect_uri=$REDIRECT_URI" \
    --data-urlencode response_type=code \
    --data-urlencode "scope=openid" \
    --data-urlencode "state=$state" \
    --data-urlencode "code_challenge=$challenge" \
    --data-urlencode code_challenge_method=S256)"
  action="$(grep -o 'id="kc-form-login"[^>]*action="[^"]*"' <<<"$form" |
    sed 's/.*action="\([^"]*\)".*/\1/; s/&amp;/\&/g')"
  [[ -n "$action" ]] || {
    echo "       no login form for $username, as when Keycloak rejects the redirect_uri (check STINT_PUBLIC_URL)" >&2
    return 1
  }

  location="$(curl -s -o /dev/null -w '%{redirect_url}' -c "$cookies" -b "$cookies" "$action" \
    --data-urlencode "username=$username" \
    --data-urlencode "password=$password" \
    --data-urlencode credentialId=)"
  [[ "$location" == "$REDIRECT_URI?"* ]] || {
    echo "       login of $username redirected to '$location'" >&2
    return 1
  }
  code="$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$location")"

  curl -s "$TOKEN_URL" -u "$CLIENT_ID:$STINT_CLIENT_SECRET" \
    --data-urlencode grant_type=authorization_code \
    --data-urlencode "code=$code" \
    --data-urlencode "redirect_uri=$REDIRECT_URI" \
    --data-urlencode "code_verifier=$verifier"
}

echo "checking the stint realm on $BASE_URL (portal URL $STINT_PUBLIC_URL)"

# Discovery
discovery="$(curl -s "$REALM_URL/.well-known/openid-configuration")"
check "discovery issuer is $REALM_URL" equals "$(jq -r .issuer <<<"$discovery")" "$REALM_URL"

# Service account
service_token="$(curl -s "$TOKEN_URL" -u "$CLIENT_ID:$STINT_CLIENT_SECRET" \
  -d grant_type=client_credentials | jq -r '.access_token // empty')"
check "client credentials grant returns a token" test -n "$service_token"
if [[ -z "$service_token" ]]; then
  echo "error: the client credentials grant failed, so the remaining checks cannot run. Check STINT_CLIENT_SECRET."
  echo "$passed passed, $failed failed"
  exit 1
fi

check "GET roles/db-admin returns 200" equals "$(admin_request GET /roles/db-admin)" 200
check "db-admin has its description" equals "$(jq -r .description "$work_dir/body")" \
  "Full administrative access to production databases"
db_admin_role="$(cat "$work_dir/body")"

check "GET users?username=alice&exact=true returns 200" \
  equals "$(admin_request GET '/users?username=alice&exact=true')" 200
alice_id="$(jq -r 'if type == "array" then .[0].id // empty else empty end' "$work_dir/body")"
check "exactly one user alice" equals "$(jq 'if type == "array" then length else -1 end' "$work_dir/body")" 1

check "GET alice's realm role mappings returns 200" \
  equals "$(admin_request GET "/users/$alice_id/role-mappings/realm")" 200
check "POST db-admin mapping for alice returns 204" \
  equals "$(admin_request POST "/users/$alice_id/role-mappings/realm" "[$db_admin_role]")" 204
admin_request GET "/users/$alice_id/role-mappings/realm" >/dev/null
check "alice has db-admin after POST" contains "$(jq -c 'map(.name)' "$work_dir/body")" db-admin
check "DELETE db-admin mapping for alice returns 204" \
  equals "$(admin_request DELETE "/users/$alice_id/role-mappings/realm" "[$db_admin_role]")" 204
admin_request GET "/users/$alice_id/role-mappings/realm/composite" >/dev/null
check "alice lacks db-admin after DELETE" \
  equals "$(jq 'map(.name) | index("db-admin")' "$work_dir/body")" null
check "alice has employee through default-roles-stint" \
  contains "$(jq -c 'map(.name)' "$work_dir/body")" employee

admin_request GET /roles/ops-lead/composites >/dev/null
check "ops-lead includes prod-deployer" contains "$(jq -c 'map(.name)' "$work_dir/body")" prod-deployer

admin_request GET '/groups?briefRepresentation=false' >/dev/null
check "all six groups exist" equals "$(jq -c 'map(.name) | sort' "$work_dir/body")" \
  '["db-approvers","engineering","stint-admins","stint-approvers","stint-auditors","support"]'
check "group support maps support-viewer" \
  contains "$(jq -c '.[] | select(.name == "support") | .realmRoles' "$work_dir/body")" support-viewer

# Client settings, with STINT_PUBLIC_URL expanded by the import
check "GET clients?clientId=stint-portal returns 200" \
  equals "$(admin_request GET "/clients?clientId=$CLIENT_ID")" 200
client="$(jq 'if type == "array" then .[0] else {} end' "$work_dir/body")"
check "redirect URI is $REDIRECT_URI" equals "$(jq -c .redirectUris <<<"$client")" "[\"$REDIRECT_URI\"]"
check "web origin is $STINT_PUBLIC_URL" equals "$(jq -c .webOrigins <<<"$client")" "[\"$STINT_PUBLIC_URL\"]"
check "post logout redirect URI is $STINT_PUBLIC_URL/*" \
  equals "$(jq -r '.attributes["post.logout.redirect.uris"]' <<<"$client")" "$STINT_PUBLIC_URL/*"
check "backchannel logout URL is $STINT_PUBLIC_URL/auth/backchannel-logout" \
  equals "$(jq -r '.attributes["backchannel.logout.url"]' <<<"$client")" "$STINT_PUBLIC_URL/auth/backchannel-logout"
check "PKCE method is S256" equals "$(jq -r '.attributes["pkce.code.challenge.method"]' <<<"$client")" S256
check "direct access grants are off" equals "$(jq -r .directAccessGrantsEnabled <<<"$client")" false

password_grant_status="$(curl -s -o /dev/null -w '%{http_code}' "$TOKEN_URL" \
  -u "$CLIENT_ID:$STINT_CLIENT_SECRET" -d grant_type=password -d username=alice -d password=alice-pw)"
check "password grant is rejected" test "$password_grant_status" -ge 400

# User tokens through the authorization code flow
alice_tokens="$(login_tokens alice alice-pw)" || alice_tokens=""
alice_id_token="$(jq -r '.id_token // empty' <<<"$alice_tokens")"
check "alice logs in with PKCE and gets an ID token" test -n "$alice_id_token"
if [[ -n "$alice_id_token" ]]; then
  id_claims="$(jwt_payload "$alice_id_token")"
  access_claims="$(jwt_payload "$(jq -r .access_token <<<"$alice_tokens")")"
  check "ID token sub is alice's user id" equals "$(jq -r .sub <<<"$id_claims")" "$alice_id"
  check "ID token email" equals "$(jq -r .email <<<"$id_claims")" alice@stint.test
  check "ID token preferred_username" equals "$(jq -r .preferred_username <<<"$id_claims")" alice
  check "ID token groups" equals "$(jq -c .groups <<<"$id_claims")" '["/engineering"]'
  check "access token groups" equals "$(jq -c .groups <<<"$access_claims")" '["/engineering"]'
  check "access token has employee" contains "$(jq -c .realm_access.roles <<<"$access_claims")" employee
  check "access token lifespan is 300 s" \
    equals "$(jq '.exp - .iat' <<<"$access_claims")" 300
fi

frank_tokens="$(login_tokens frank frank-pw)" || frank_tokens=""
frank_access_token="$(jq -r '.access_token // empty' <<<"$frank_tokens")"
check "frank logs in" test -n "$frank_access_token"
if [[ -n "$frank_access_token" ]]; then
  check "frank has support-viewer through group support" \
    contains "$(jwt_payload "$frank_access_token" | jq -c .realm_access.roles)" support-viewer
fi

erin_tokens="$(login_tokens erin erin-pw)" || erin_tokens=""
erin_access_token="$(jq -r '.access_token // empty' <<<"$erin_tokens")"
check "erin logs in" test -n "$erin_access_token"
if [[ -n "$erin_access_token" ]]; then
  check "erin has the stint-portal admin client role" \
    contains "$(jwt_payload "$erin_access_token" | jq -c '.resource_access["stint-portal"].roles')" admin
fi

echo "$passed passed, $failed failed"
((failed == 0))
