bucket = "recordline-dev-tfstate"
prefix = "recordline"
