# A deployment made before cells is one state, copied to this root's and to its first
# cell's (infra/README.md, "Moving a deployment into cells"): what is the cell's leaves
# this state without being destroyed (the cell's state keeps it). What neither root
# declares any more (the runtime accounts' old binding and role, the serving tier's old
# alerts, replaced by the instance tickets and pages here) is destroyed by this state's
# apply alone.

removed {
  from = module.system
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_cloud_run_v2_worker_pool.exporter
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_cloud_run_v2_worker_pool_iam_member.deployer_deploys_exporter
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_cloud_run_v2_worker_pool_iam_member.operator_runs_exporter
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.operator_capacity
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.operator_restore
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_custom_role.operator_restore_rows
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_iam_member.operator_restore
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_project_service_identity.agents
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.exporter
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account.push
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.acts_as_exporter
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.pubsub_mints_push_token
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_service_account_iam_member.terraform_apply_acts_as_push
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_spanner_instance.serving
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_spanner_instance_iam_member.operator_capacity
  lifecycle {
    destroy = false
  }
}

removed {
  from = time_sleep.service_agents
  lifecycle {
    destroy = false
  }
}
