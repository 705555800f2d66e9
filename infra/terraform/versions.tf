terraform {
  # 1.11 brings write-only arguments, which keep the page-token key out of state.
  required_version = ">= 1.11, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.23, < 7.0"
    }
    # google_project_service_identity only (apis.tf).
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.23, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7, < 4.0"
    }
    time = {
      source  = "hashicorp/time"
      version = ">= 0.12, < 1.0"
    }
  }

  # Partial configuration: the bucket and prefix come from env/<environment>.backend.hcl,
  # so dev and prod never share state.
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

provider "google-beta" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app         = var.service_name
    environment = var.environment
    managed-by  = "terraform"
  }
}
