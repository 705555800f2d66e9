#!/usr/bin/env bash
# A cell's rollback (docs/operations.md#rolling-back, #rolling-the-exporter-back), as
# .github/workflows/rollback.yml runs it: as the deploy account, in the cell's queue.
# On-call asks for it; they never change a service, a pool or a job themselves.
#
#   infra/rollback.sh where   the cell of $SYSTEM (cell=... to $GITHUB_OUTPUT), or a refusal
#   infra/rollback.sh act     $PART of that cell back to its last good state
#
# From the environment: BUCKET (the environment's state bucket, whose directory/ names
# every system), SYSTEM (any system of the cell), PART (service: the ingest service's
# traffic and its ops job; exporter: the pool's instances and its export job;
# follow-latest: the service's traffic back on its newest revision, ending the pin),
# BY (image or settings: what differs in the last good state), TO (empty: say both
# states and the systems served and change nothing; else act only if the revision it
# finds now is still TO).
set -euo pipefail

refuse() {
  echo "refused: $*" >&2
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then echo "refused: $*" >> "$GITHUB_STEP_SUMMARY"; fi
  exit 1
}

say() {
  echo "$*"
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then echo "$*" >> "$GITHUB_STEP_SUMMARY"; fi
}

[[ "$SYSTEM" =~ ^[a-z][a-z0-9-]{0,61}$ ]] || refuse "'$SYSTEM' is not a system's name: nothing was changed"

# Step 0: the system's directory entry, as shell variables in capitals ($SERVICE, $POOL, ...).
FOUND=$(gcloud storage cat "gs://$BUCKET/directory/*.json" | jq -rs --arg s "$SYSTEM" 'add | .[$s] // empty | to_entries[] | "\(.key | ascii_upcase)=\(.value | @sh)"')
[[ -n "$FOUND" ]] || refuse "no system $SYSTEM in the directory (gs://$BUCKET/directory/): nothing was changed; name a system of the cell as its ticket does"
eval "$FOUND"

if [[ "$1" == where ]]; then
  say "$SYSTEM is in cell $CELL ($PROJECT, $REGION)"
  echo "cell=$CELL" >> "$GITHUB_OUTPUT"
  exit 0
fi

case "$PART" in
  service | follow-latest) SERVES_AS=serve ;;
  exporter)
    [[ -n "$POOL" ]] || refuse "cell $CELL has no exporter pool: nothing was changed"
    SERVES_AS="export" ;;
  *) refuse "part must be service, exporter or follow-latest, got '$PART'" ;;
esac
[[ "$BY" == image || "$BY" == settings ]] || refuse "by must be image or settings, got '$BY'"

# Each revision that started and runs the cell's code, newest first, one a line:
# NAME DIGEST SETTINGS_VERSION MOUNTS (every SECRET/VERSION it mounts but latest).
if [[ "$PART" == exporter ]]; then
  BAD=$(gcloud beta run worker-pools describe "$POOL" --project="$PROJECT" --region="$REGION" --format=json | jq -r '(.latestReadyRevision // "") as $latest | [.instanceSplits[]? | select(.percent > 0)] | max_by(.percent) // {} | if .type == "INSTANCE_SPLIT_ALLOCATION_TYPE_REVISION" then .revision else $latest end | split("/") | last')
  STATES=$(gcloud beta run worker-pools revisions list --worker-pool="$POOL" --project="$PROJECT" --region="$REGION" --format=json | jq -r --arg secret "$SYSTEMS_SECRET" 'sort_by(.createTime) | reverse | .[] | select(any(.conditions[]?; .type == "Ready" and .state == "CONDITION_SUCCEEDED")) | select(.containers[0].command != ["python3"]) | select(any(.containers[0].env[]?; .name == "RECORDLINE_SYSTEMS" and .value == "@/etc/recordline/systems/systems.json")) | [(.name | split("/") | last), (.containers[0].image | split("@") | last), ([.volumes[]?.secret | select((.secret | split("/") | last) == $secret) | .items[0].version] | first // "none"), ([(.volumes[]?.secret | "\(.secret | split("/") | last)/\(.items[]?.version)"), (.containers[0].env[]?.valueSource.secretKeyRef | select(.) | "\(.secret | split("/") | last)/\(.version)")] | map(select(endswith("/latest") | not)) | join(","))] | @tsv')
else
  DESCRIBED=$(gcloud run services describe "$SERVICE" --project="$PROJECT" --region="$REGION" --format=json)
  BAD=$(jq -r '[.status.traffic[] | select(.percent > 0)] | max_by(.percent) | .revisionName' <<<"$DESCRIBED")
  STATES=$(gcloud run revisions list --service="$SERVICE" --project="$PROJECT" --region="$REGION" --format=json | jq -r --arg secret "$SYSTEMS_SECRET" 'sort_by(.metadata.creationTimestamp) | reverse | .[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | select(.spec.containers[0].command != ["python3"]) | [.metadata.name, (.status.imageDigest | split("@") | last), ([.spec.volumes[]?.secret | select(.secretName == $secret) | .items[0].key] | first // "none"), ([(.spec.volumes[]?.secret | "\(.secretName)/\(.items[]?.key)"), (.spec.containers[0].env[]?.valueFrom.secretKeyRef | select(.) | "\(.name)/\(.key)")] | map(select(endswith("/latest") | not)) | join(","))] | @tsv')
fi
read -r _ BAD_IMAGE BAD_SETTINGS _ <<<"$(awk -v r="$BAD" '$1 == r' <<<"$STATES")"
say "now:     $BAD, image ${BAD_IMAGE:-none}, settings version ${BAD_SETTINGS:-none}"

if [[ "$PART" == follow-latest ]]; then
  # The end of the pin: the newest revision that started, whatever it differs by.
  LATEST=$(jq -r '.status.latestReadyRevisionName' <<<"$DESCRIBED")
  read -r PREV IMAGE SETTINGS MOUNTS <<<"$(awk -v r="$LATEST" '$1 == r' <<<"$STATES")"
  WHAT="following"
else
  # Back means older than what serves: after a rollback, the revision it moved off is
  # newer than the one serving, and asking again must not return to it.
  read -r PREV IMAGE SETTINGS MOUNTS <<<"$(awk -v bad="$BAD" -v by="$BY" -v image="$BAD_IMAGE" -v settings="$BAD_SETTINGS" 'older && ((by == "image" && $2 != image) || (by == "settings" && $3 != settings)) { print; exit } $1 == bad { older = 1 }' <<<"$STATES")"
  WHAT="back to"
fi

STATE=ENABLED   # unless a secret version PREV mounts (SECRET/VERSION, in MOUNTS) is not
for MOUNT in ${MOUNTS//,/ }; do
  HELD=$(gcloud secrets versions describe "${MOUNT#*/}" --secret="${MOUNT%/*}" --project="$PROJECT" --format='value(state)' || echo MISSING)
  [[ "$HELD" == ENABLED ]] || STATE="version ${MOUNT#*/} of ${MOUNT%/*} is $HELD"
done
say "$WHAT: ${PREV:-nothing}, image ${IMAGE:-none}, settings version ${SETTINGS:-none} ($STATE)"
if [[ -z "$PREV" && "$PART" == follow-latest ]]; then
  refuse "the newest revision, ${LATEST:-none}, is not one that started and runs the cell's code: nothing was changed; roll forward (Rolling back's step 4)"
elif [[ -z "$PREV" ]]; then
  refuse "no revision that started before $BAD differs from it by its $BY: nothing was changed; roll forward (Rolling back's step 4)"
elif [[ "$STATE" != ENABLED ]]; then
  refuse "$PREV cannot start, its $STATE; nothing was changed. Roll forward (Rolling back's step 4), or, if it is only DISABLED, have an owner of the project enable it (gcloud secrets versions enable VERSION --secret=SECRET) and run this again"
fi

SERVES=$(gcloud secrets versions access "$SETTINGS" --secret="$SYSTEMS_SECRET" --project="$PROJECT" | jq -r 'keys[]')
NAMED=$(gcloud secrets versions access latest --secret="$SYSTEMS_SECRET" --project="$PROJECT" | jq -r 'keys[]')
say "$PREV will $SERVES_AS: $(xargs <<<"$SERVES"); not: $(comm -13 <(sort <<<"$SERVES") <(sort <<<"$NAMED") | xargs) (Rolling back's step 4 brings those back)"

# The compare-and-set: what was read out to on-call is what is acted on, or nothing.
if [[ -z "$TO" ]]; then
  say "nothing was changed: to act, run this again with to=$PREV"
  exit 0
elif [[ "$TO" != "$PREV" ]]; then
  refuse "the revision to return to is now $PREV, not $TO (an apply or a rollout changed the revisions since): nothing was changed; run it again without to= and read what it says"
fi

case "$PART" in
  service)
    gcloud run services update-traffic "$SERVICE" --project="$PROJECT" --region="$REGION" --to-revisions="$PREV=100"
    JOB=$OPS_JOB
    IMAGE=$(gcloud run revisions describe "$PREV" --project="$PROJECT" --region="$REGION" --format='value(status.imageDigest)') ;;
  follow-latest)
    gcloud run services update-traffic "$SERVICE" --project="$PROJECT" --region="$REGION" --to-latest
    JOB=$OPS_JOB
    IMAGE=$(gcloud run revisions describe "$PREV" --project="$PROJECT" --region="$REGION" --format='value(status.imageDigest)') ;;
  exporter)
    gcloud beta run worker-pools update-instance-split "$POOL" --project="$PROJECT" --region="$REGION" --to-revisions="$PREV=100"
    JOB=$EXPORT_JOB
    IMAGE=$(gcloud beta run worker-pools revisions describe "$PREV" --project="$PROJECT" --region="$REGION" --format='value(containers[0].image)') ;;
esac
# The job runs what now serves or exports: its image and its systems' file.
gcloud run jobs update "$JOB" --project="$PROJECT" --region="$REGION" --image="$IMAGE" --update-secrets="/etc/recordline/systems/systems.json=$SYSTEMS_SECRET:$SETTINGS"
say "done: $CELL's $([[ "$PART" == exporter ]] && echo "$POOL" || echo "$SERVICE") is on $PREV; $JOB runs its image and settings version $SETTINGS"
