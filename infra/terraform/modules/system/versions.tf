terraform {
  required_providers {
    google = {
      source  = "hashicorp/google"
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
}
