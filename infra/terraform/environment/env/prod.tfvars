project_id   = "recordline-prod"
environment  = "prod"
region       = "europe-west1"
github_owner = "recordline"
github_repo  = "recordline"
# Numeric ids (gh api repos/OWNER/REPO --jq '.id, .owner.id'): 0 until set, which the
# plan refuses (infra/README.md, step 2).
github_repository_id   = "0"
github_owner_id        = "0"
terraform_state_bucket = "recordline-prod-tfstate"

# Where prod's cells move if europe-west1 is lost (docs/operations.md#losing-a-zone-or-a-region):
# every rollout copies each image there first, and the region plan points the cells at it.
standby_region = "europe-west4"

# projects/recordline-prod/notificationChannels/<id> of the on-call channels. At least one
# is required: prod does not plan without it (infra/README.md, step 3 of the bootstrap).
notification_channels = []

# Where tickets go (dead letters, Spanner CPU, each system's detail of a page) unless a
# system names its own: at least one is required in prod (step 3 of the bootstrap).
ticket_channels = []

# Who is on call: they may act as the operator account (rollbacks, replays) and see the
# dashboards, logs and dead letters. At least one is required in prod, a group is best:
# group:recordline-oncall@example.com (infra/README.md, step 2). Each cell's file names
# the same (its dead letters are read by them).
oncall = []
