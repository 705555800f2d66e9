project_id   = "recordline-dev"
environment  = "dev"
region       = "europe-west1"
github_owner = "recordline"
github_repo  = "recordline"
# Numeric ids (gh api repos/OWNER/REPO --jq '.id, .owner.id'): 0 until set, which the
# plan refuses (infra/README.md, step 2).
github_repository_id   = "0"
github_owner_id        = "0"
terraform_state_bucket = "recordline-dev-tfstate"

notification_channels = []
