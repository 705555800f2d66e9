resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Encrypted at rest with Google-managed keys; images hold no data that requires customer-managed keys.
  project       = var.project_id
  location      = var.region
  repository_id = var.artifact_repository_id
  format        = "DOCKER"
  description   = "Images of ${var.service_name}, tagged with the commit they were built from."

  docker_config {
    # A commit SHA names exactly one image, so rolling back to a tag is exact.
    immutable_tags = true
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.kept_image_versions
    }
  }

  cleanup_policies {
    id     = "delete-older"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.enabled]
}
