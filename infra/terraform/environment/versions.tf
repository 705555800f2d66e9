terraform {
  required_version = ">= 1.11, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.23, < 7.0"
    }
  }

  # Partial configuration: the bucket from ../env/<environment>.backend.hcl, the prefix
  # <its prefix>/environment (infra/README.md): each cell's state is a prefix of its own.
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app         = var.service_name
    environment = var.environment
    managed-by  = "terraform"
  }
}
