project_id             = "recordline-dev"
environment            = "dev"
region                 = "europe-west1"
dataset_location       = "EU"
github_owner           = "recordline"
github_repo            = "recordline"
terraform_state_bucket = "recordline-dev-tfstate"

# Scale to zero between tests; a cold start only delays the first push.
min_instances = 0
max_instances = 3

readers = []

notification_channels = []
