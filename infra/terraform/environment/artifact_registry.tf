# The images, in the environment's region and, with standby_region, in a second region
# too: every deploy pushes each image to both (deploy-environment.yml), so a region lost
# takes no image with it, and the break-glass rollout (break-glass.yml) deploys from the
# standby's. One repository per location, keyed by it: moving the cells to the standby
# region (docs/operations.md#losing-a-zone-or-a-region) swaps `region` and
# `standby_region` and replaces neither repository. Every cell pulls from here, a cell in
# a project of its own through its Cloud Run agent's reader grant (the cell root's
# images.tf).
locals {
  image_locations = toset(compact([var.region, var.standby_region]))
}

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Encrypted at rest with Google-managed keys; images hold no data that requires customer-managed keys.
  for_each = local.image_locations

  project       = var.project_id
  location      = each.key
  repository_id = var.artifact_repository_id
  format        = "DOCKER"
  description   = "Images of ${var.service_name}, tagged with the commit they were built from${each.key == var.region ? "" : " (standby: the same images as in ${var.region})"}."

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

# The repository of a deployment made before there was a standby: the region's.
moved {
  from = google_artifact_registry_repository.images
  to   = google_artifact_registry_repository.images["europe-west1"]
}
