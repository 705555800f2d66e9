bucket = "recordline-prod-tfstate"
prefix = "recordline"
