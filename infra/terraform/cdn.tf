# Cloud CDN in front of the cell's read paths, when `cdn.enabled` (variables.tf; off by
# default): an external Application Load Balancer on the cell's own domains, whose URL
# map sends a follower's reads of records and streams to a backend service with Cloud
# CDN, and answers every other path with a redirect to the cell's run.app URL. Pushes
# never come here: each subscription pushes to the run.app URL, which its OIDC audience
# names (modules/system/pubsub.tf), and the redirect keeps the LB from serving them.
#
# What is cached is what the service marks cacheable and nothing else (USE_ORIGIN_HEADERS,
# no TTL of the CDN's own, no negative caching): pages and chunks below the read horizon
# `public, immutable`, a long-poll's answer for its URL a short while, and never a
# `private` or `no-store` one, but for an answer to a read pass (below), which says
# `private` and is kept a second as every signed request's answer is. A request with credentials bypasses the cache both ways
# (it is neither answered from it nor stored), so a token-guarded read is always the
# service's own answer to that token; without read passes (below), Cloud Run's invoker
# check still judges every request the CDN forwards. Cloud CDN keys nothing by the caller: what it stored is served to
# whoever asks its URL (https://cloud.google.com/cdn/docs/caching), which is why only what
# the service marks `public` may be stored. docs/deploying.md#cloud-cdn-for-followers says
# when it pays and how to see it work; infra/fleet_cost.py prices it.
#
# Read passes (`cdn.read_passes`, on with the CDN by default): in a cell every read needs a
# token, so without them nothing is `public` and the CDN caches nothing. A pass is a Cloud
# CDN signed cookie (Cloud-CDN-Cookie) the service issues to a reader whose token it
# verified (POST /systems/<system>/v1/read-pass), signed with a key the CDN's backend holds
# too: the CDN checks it on every request, hit or miss, and the service on a miss. Such a
# miss reaches Cloud Run with the cookie and no token, so Cloud Run's invoker check is off
# (cell.tf) and the service verifies every token's signature itself. Reads carrying a pass
# (and no token) go to one of two CDN backends, which keep an answer to a signed request
# for a time of their own whatever its Cache-Control (cdn_signed_max_age): a catch-up read
# of the records stream to one keeping it a minute, a long-poll and every other read to
# one keeping it a second. SSE, HEAD, the pass's own path and every read without a pass
# go to a third backend on the same endpoint group, without the CDN.

locals {
  cdn_enabled = var.cdn.enabled
  # A follower's reads, in a cell: a system's records (pages, and a record by its id) and
  # its Durable Streams. Nothing else is routed to the CDN's backend.
  cdn_read_paths = [
    "/systems/{system=*}/v1/records",
    "/systems/{system=*}/v1/records/**",
    "/systems/{system=*}/v1/streams/**",
  ]
  # With read passes: where a reader trades its token for a pass, always to the service.
  cdn_pass_path = "/systems/{system=*}/v1/read-pass"
  cdn_passes    = local.cdn_enabled && var.cdn.read_passes
  # A request carrying a pass: the Cookie header names Cloud-CDN-Cookie, first or after
  # another cookie. What it matches is routed to the CDN, which refuses (403) a cookie of
  # that name it cannot verify.
  cdn_pass_cookie = "(.*;\\s*)?Cloud-CDN-Cookie=.*"
  # SSE: a stream, never one answer. Cloud CDN would keep what it got of it as a signed
  # request's answer (below), so it goes to the backend without the CDN, asked either way.
  # The service negotiates Accept as RFC 9110 says, in any case: events where the header
  # names them, `text/*`, or `*/*` above a JSON given a lower quality (which takes a
  # parameter, `;q=`), so each of those goes around the CDN; `*/*` alone is JSON.
  cdn_sse_query  = { name = "live", value = "sse" }
  cdn_sse_accept = "(?i).*(event-stream|text/\\*|\\*/\\*.*;|;.*\\*/\\*).*"
  # A request with a token is judged by its token (the service ignores a pass beside it):
  # it goes to the backend without the CDN whatever cookie it carries.
  cdn_token_headers = ["Authorization", "X-Serverless-Authorization"]
  # A request carrying a pass and no token (a header match inverted: absent), as each rule
  # to a CDN backend matches it.
  cdn_pass_headers = concat(
    [{ header_name = "Cookie", regex_match = local.cdn_pass_cookie, present_match = null, invert_match = null }],
    [for name in local.cdn_token_headers : { header_name = name, regex_match = null, present_match = true, invert_match = true }],
  )
  # A HEAD names the tail now (`no-store`), and a CDN may answer it from a GET of the same
  # URL kept (a chunk, whose next offset need not be the tail): it goes without the CDN,
  # where the service checks its pass. One a follower's start, never a follower's loop.
  cdn_head = { header_name = ":method", exact_match = "HEAD" }
  # Cloud CDN treats every answer to a signed request as `public,
  # max-age=signed_url_cache_max_age_sec`, whatever the service's Cache-Control says
  # (https://cloud.google.com/cdn/docs/using-signed-cookies), so what a read may be kept
  # picks its backend. `live`: one second, so a long-poll's 204 ("nothing yet") is kept
  # no longer than the service keeps it for its followers, and no `no-cache` page at the
  # tail is served past it; followers asking one URL together still make one request.
  # `catch_up`: a minute, the service's own max-age for a chunk reaching the tail (one
  # short of it never changes), so readers catching up minutes apart share each chunk.
  # A reader re-reading the offset it read from sees its own write up to a minute late
  # this way; a follower, which reads on from the chunk's next offset, misses nothing.
  # A chunk whose rows the retention deletes within the minute is served to its end.
  cdn_signed_max_age = { live = 1, catch_up = 60 }
  # A catch-up read: a GET of the records stream from an offset, neither live (a `live`
  # parameter, matched first) nor from `now` (where the tail is now: `no-store`, so the
  # one-second backend, where followers starting together still make one request and a
  # tail a second old only starts them a second earlier). The rejections stream is not
  # one: its chunks are revalidated (`no-cache`), a replay marking a rejection `stored`.
  cdn_catch_up_path  = "/systems/{system=*}/v1/streams/records"
  cdn_catch_up_query = "offset"
  cdn_live_query     = "live"
  cdn_now_query      = { name = "offset", value = "now" }
  cdn_stream_path    = "/systems/{system=*}/v1/streams/**"
  # The keys a pass may be signed with, by name (the first signs, each verifies: rotation,
  # docs/deploying.md#cloud-cdn-for-followers), and the service's setting of where clients
  # reach the CDN, which each pass's URL prefix starts with.
  cdn_pass_keys = local.cdn_passes ? var.cdn.read_pass_keys : []
  cdn_pass_env = local.cdn_passes ? {
    RECORDLINE_READ_PASS_URL = "https://${var.cdn.domains[0]}"
  } : {}
  # The resources of passes (the catch-up backend, the backend without the CDN, the key's
  # secret), where the cell has them.
  cdn_pass = local.cdn_passes ? { cdn = var.cdn.domains } : {}
  # Requests carrying either header are never answered from the cache nor stored in it:
  # Cloud Run reads the caller from X-Serverless-Authorization when it is there.
  cdn_bypass_headers = ["Authorization", "X-Serverless-Authorization"]
  # What the CDN does with the service's answers: only what their Cache-Control allows;
  # many followers asking for one URL at once make one request to the service; nothing
  # served stale past its max-age (a long-poll's answer would say "nothing new" after
  # something came); no status cached on the CDN's own judgement (its defaults keep a 404
  # or a 410 two minutes, https://cloud.google.com/cdn/docs/using-negative-caching: a 404
  # for a message about to be stored, a 410 for a page token, never beyond what they mean).
  cdn_cache = {
    cache_mode         = "USE_ORIGIN_HEADERS"
    request_coalescing = true
    serve_while_stale  = 0
    negative_caching   = false
    # The whole URL is the key: offset, cursor, live, since, limit and page_token each
    # make another answer. None is left out by name: /v1/records answers a parameter it
    # does not know 400 (no-store), a stream's only makes its asker a miss, and a list of
    # those the routes take would give one query's answer to another the day one more
    # is taken. No header is named in it: Cloud CDN keys by the Vary the service sends
    # (Accept on the paged lists, where one URL is a page or a stream; Accept-Encoding on
    # a compressed answer), and answers that differ by a token's reader are never stored.
    include_host         = true
    include_protocol     = true
    include_query_string = true
  }
  # The load balancer's resources, one of each, where the cell has it.
  cdn = local.cdn_enabled ? { cdn = var.cdn.domains } : {}
  # One forwarding rule (HTTPS) a cell with the CDN: what it is billed by the hour.
  cdn_forwarding_rules = length(local.cdn)
}

locals {
  # Where every path the CDN does not serve is sent: the cell's run.app host.
  cdn_origin_host = trimprefix(local.cell_url, "https://")
}

resource "google_compute_global_address" "cdn" {
  for_each = local.cdn

  project = var.project_id
  name    = "${local.cell}-cdn"

  depends_on = [google_project_service.enabled]
}

resource "google_compute_region_network_endpoint_group" "cdn" {
  for_each = local.cdn

  project               = var.project_id
  name                  = "${local.cell}-cdn"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = google_cloud_run_v2_service.ingest.name
  }
}

resource "google_compute_backend_service" "cdn_reads" {
  for_each = local.cdn

  project               = var.project_id
  name                  = "${local.cell}-cdn-reads"
  description           = "A follower's reads of the cell's records and streams, through Cloud CDN (cdn.tf)."
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  # A serverless backend takes no timeout of the LB's: Cloud Run's request timeout
  # (request_timeout_seconds, above the longest long-poll and stream) is the bound.

  enable_cdn = true
  cdn_policy {
    cache_mode         = local.cdn_cache.cache_mode
    request_coalescing = local.cdn_cache.request_coalescing
    serve_while_stale  = local.cdn_cache.serve_while_stale
    negative_caching   = local.cdn_cache.negative_caching

    cache_key_policy {
      include_host         = local.cdn_cache.include_host
      include_protocol     = local.cdn_cache.include_protocol
      include_query_string = local.cdn_cache.include_query_string
    }

    dynamic "bypass_cache_on_request_headers" {
      for_each = local.cdn_bypass_headers
      content {
        header_name = bypass_cache_on_request_headers.value
      }
    }

    # With read passes: how long an answer to a signed request is kept, whatever its
    # Cache-Control (cdn_signed_max_age says why). Without: never used, left to the API.
    signed_url_cache_max_age_sec = local.cdn_passes ? local.cdn_signed_max_age.live : null
  }

  # What a reader (or curl) sees of the cache: hit, miss, stale, revalidated,
  # uncacheable or disabled.
  custom_response_headers = ["X-Cache-Status: {cdn_cache_status}"]

  # One request in a hundred, as the push logs are kept (logging.tf): enough to read the
  # hit ratio in the logs (jsonPayload.cacheHit), a cent's worth at any follower count.
  log_config {
    enable      = true
    sample_rate = 0.01
  }

  backend {
    group = google_compute_region_network_endpoint_group.cdn["cdn"].id
  }
}

# With read passes, a catch-up read of the records stream carrying a pass: cdn_reads with
# an answer to a signed request kept a minute, not a second (cdn_signed_max_age).
resource "google_compute_backend_service" "cdn_catch_up" {
  for_each = local.cdn_pass

  project               = var.project_id
  name                  = "${local.cell}-cdn-catch-up"
  description           = "A follower's catch-up reads of the cell's records streams with a read pass, through Cloud CDN (cdn.tf)."
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"

  enable_cdn = true
  cdn_policy {
    cache_mode         = local.cdn_cache.cache_mode
    request_coalescing = local.cdn_cache.request_coalescing
    serve_while_stale  = local.cdn_cache.serve_while_stale
    negative_caching   = local.cdn_cache.negative_caching

    cache_key_policy {
      include_host         = local.cdn_cache.include_host
      include_protocol     = local.cdn_cache.include_protocol
      include_query_string = local.cdn_cache.include_query_string
    }

    dynamic "bypass_cache_on_request_headers" {
      for_each = local.cdn_bypass_headers
      content {
        header_name = bypass_cache_on_request_headers.value
      }
    }

    signed_url_cache_max_age_sec = local.cdn_signed_max_age.catch_up
  }

  custom_response_headers = ["X-Cache-Status: {cdn_cache_status}"]

  log_config {
    enable      = true
    sample_rate = 0.01
  }

  backend {
    group = google_compute_region_network_endpoint_group.cdn["cdn"].id
  }
}

# With read passes, what reaches the service without the CDN: SSE, HEAD, the pass's own
# path, and every read with a token or without a pass. The CDN's backend, holding signing keys,
# would answer a request without a valid pass 403 and keep a signed request's answer as
# public (cdn_signed_max_age).
resource "google_compute_backend_service" "cdn_direct" {
  for_each = local.cdn_pass

  project               = var.project_id
  name                  = "${local.cell}-cdn-direct"
  description           = "The cell's reads without a read pass, SSE, HEAD and read passes themselves, to the service without Cloud CDN (cdn.tf)."
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  enable_cdn            = false

  log_config {
    enable      = true
    sample_rate = 0.01
  }

  backend {
    group = google_compute_region_network_endpoint_group.cdn["cdn"].id
  }
}

# --- read passes: the signing keys ----------------------------------------------------

# Each key 16 random bytes (what Cloud CDN takes), kept in the state as the backend's key
# is (the API takes it in the clear, and the provider keeps what it sent). Cloud CDN and
# the service take it base64url, with its padding.
resource "random_bytes" "read_pass" {
  for_each = toset(local.cdn_pass_keys)

  length = 16
}

# Cloud CDN checks a pass against the key its KeyName names on the backend the request
# went to: each key on both CDN backends (at most three a backend, cdn.read_pass_keys).
resource "google_compute_backend_service_signed_url_key" "read_pass" {
  for_each = toset(local.cdn_pass_keys)

  project         = var.project_id
  name            = each.key
  key_value       = replace(replace(random_bytes.read_pass[each.key].base64, "+", "-"), "/", "_")
  backend_service = google_compute_backend_service.cdn_reads["cdn"].name
}

resource "google_compute_backend_service_signed_url_key" "read_pass_catch_up" {
  for_each = toset(local.cdn_pass_keys)

  project         = var.project_id
  name            = each.key
  key_value       = replace(replace(random_bytes.read_pass[each.key].base64, "+", "-"), "/", "_")
  backend_service = google_compute_backend_service.cdn_catch_up["cdn"].name
}

resource "google_secret_manager_secret" "read_pass" {
  #checkov:skip=CKV_GCP_128:Google-managed encryption; the keys only sign read passes, which last minutes, and rotate by adding a key.
  for_each = local.cdn_pass

  project   = var.project_id
  secret_id = "${local.cell}-read-pass"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# A version per change of the keys, named in the service's template (cell.tf), so a
# rotation makes a revision that reads the new keys.
resource "google_secret_manager_secret_version" "read_pass" {
  for_each = local.cdn_pass

  secret = google_secret_manager_secret.read_pass["cdn"].id
  # RECORDLINE_READ_PASS_KEYS: `name:key`, comma-separated, in cdn.read_pass_keys' order
  # (the first signs), each key as the backend holds it: from the bytes, as the backend's
  # key resource is under the service (backend, endpoint group), which reads this version.
  secret_data = join(",", [
    for name in local.cdn_pass_keys :
    "${name}:${replace(replace(random_bytes.read_pass[name].base64, "+", "-"), "/", "_")}"
  ])

  # The old version is left enabled once the service names the new one: an instance of
  # the revision being replaced may still start, and so may a revision a rollback returns
  # to; each reads the version it names. A rollout retires it once no revision it keeps
  # names it (deploy-cell.yml), and the backends stop honouring its keys as soon as they
  # leave cdn.read_pass_keys.
  deletion_policy = "ABANDON"

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_read_pass" {
  for_each = local.cdn_pass

  project   = var.project_id
  secret_id = google_secret_manager_secret.read_pass["cdn"].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}

resource "google_compute_url_map" "cdn" {
  for_each = local.cdn

  project     = var.project_id
  name        = "${local.cell}-cdn"
  description = "The cell's read paths to Cloud CDN; everything else redirected to the run.app URL (cdn.tf)."

  # A host the certificate does not name (the address itself): the run.app URL.
  default_url_redirect {
    host_redirect          = local.cdn_origin_host
    https_redirect         = true
    redirect_response_code = "TEMPORARY_REDIRECT"
    strip_query            = false
  }

  host_rule {
    hosts        = var.cdn.domains
    path_matcher = "reads"
  }

  path_matcher {
    name = "reads"

    # Pushes, replays, the console, /readyz: where they were always served, the method
    # and body kept (307). Nothing but the reads below reaches the service through here.
    default_url_redirect {
      host_redirect          = local.cdn_origin_host
      https_redirect         = true
      redirect_response_code = "TEMPORARY_REDIRECT"
      strip_query            = false
    }

    # Without read passes: every read to the CDN's backend, which bypasses its cache for a
    # request with a token.
    dynamic "route_rules" {
      for_each = local.cdn_passes ? [] : ["reads"]
      content {
        priority = 1
        service  = google_compute_backend_service.cdn_reads["cdn"].id

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value
          }
        }
      }
    }

    # With read passes, in order: SSE (either way of asking), HEAD and the pass's own path
    # to the backend without the CDN; a stream's read carrying a pass and no token that is
    # live or from `now` to the CDN keeping it a second; a catch-up read of the records
    # stream carrying one to the CDN keeping it a minute; every other read carrying one to
    # the CDN keeping it a second; every other read to the backend without it.
    dynamic "route_rules" {
      for_each = local.cdn_passes ? ["direct"] : []
      content {
        priority = 1
        service  = google_compute_backend_service.cdn_direct["cdn"].id

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value
            query_parameter_matches {
              name        = local.cdn_sse_query.name
              exact_match = local.cdn_sse_query.value
            }
          }
        }

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value
            header_matches {
              header_name = "Accept"
              regex_match = local.cdn_sse_accept
            }
          }
        }

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value
            header_matches {
              header_name = local.cdn_head.header_name
              exact_match = local.cdn_head.exact_match
            }
          }
        }

        match_rules {
          path_template_match = local.cdn_pass_path
        }
      }
    }

    dynamic "route_rules" {
      for_each = local.cdn_passes ? ["live"] : []
      content {
        priority = 2
        service  = google_compute_backend_service.cdn_reads["cdn"].id

        match_rules {
          path_template_match = local.cdn_stream_path
          query_parameter_matches {
            name          = local.cdn_live_query
            present_match = true
          }
          dynamic "header_matches" {
            for_each = local.cdn_pass_headers
            content {
              header_name   = header_matches.value.header_name
              regex_match   = header_matches.value.regex_match
              present_match = header_matches.value.present_match
              invert_match  = header_matches.value.invert_match
            }
          }
        }

        match_rules {
          path_template_match = local.cdn_stream_path
          query_parameter_matches {
            name        = local.cdn_now_query.name
            exact_match = local.cdn_now_query.value
          }
          dynamic "header_matches" {
            for_each = local.cdn_pass_headers
            content {
              header_name   = header_matches.value.header_name
              regex_match   = header_matches.value.regex_match
              present_match = header_matches.value.present_match
              invert_match  = header_matches.value.invert_match
            }
          }
        }
      }
    }

    dynamic "route_rules" {
      for_each = local.cdn_passes ? ["catch-up"] : []
      content {
        priority = 3
        service  = google_compute_backend_service.cdn_catch_up["cdn"].id

        match_rules {
          path_template_match = local.cdn_catch_up_path
          query_parameter_matches {
            name          = local.cdn_catch_up_query
            present_match = true
          }
          header_matches {
            header_name = ":method"
            exact_match = "GET"
          }
          dynamic "header_matches" {
            for_each = local.cdn_pass_headers
            content {
              header_name   = header_matches.value.header_name
              regex_match   = header_matches.value.regex_match
              present_match = header_matches.value.present_match
              invert_match  = header_matches.value.invert_match
            }
          }
        }
      }
    }

    dynamic "route_rules" {
      for_each = local.cdn_passes ? ["passes"] : []
      content {
        priority = 4
        service  = google_compute_backend_service.cdn_reads["cdn"].id

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value

            dynamic "header_matches" {
              for_each = local.cdn_pass_headers
              content {
                header_name   = header_matches.value.header_name
                regex_match   = header_matches.value.regex_match
                present_match = header_matches.value.present_match
                invert_match  = header_matches.value.invert_match
              }
            }
          }
        }
      }
    }

    dynamic "route_rules" {
      for_each = local.cdn_passes ? ["without"] : []
      content {
        priority = 5
        service  = google_compute_backend_service.cdn_direct["cdn"].id

        dynamic "match_rules" {
          for_each = local.cdn_read_paths
          content {
            path_template_match = match_rules.value
          }
        }
      }
    }
  }
}

resource "google_compute_ssl_policy" "cdn" {
  for_each = local.cdn

  project         = var.project_id
  name            = "${local.cell}-cdn"
  profile         = "RESTRICTED"
  min_tls_version = "TLS_1_2"
}

# Named by its domains, and made before the one it replaces: a change of domains never
# leaves the proxy without a certificate.
resource "google_compute_managed_ssl_certificate" "cdn" {
  for_each = local.cdn

  project = var.project_id
  name    = "${local.cell}-cdn-${substr(sha256(join(",", sort(var.cdn.domains))), 0, 8)}"

  managed {
    domains = var.cdn.domains
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_target_https_proxy" "cdn" {
  for_each = local.cdn

  project          = var.project_id
  name             = "${local.cell}-cdn"
  url_map          = google_compute_url_map.cdn["cdn"].id
  ssl_certificates = [google_compute_managed_ssl_certificate.cdn["cdn"].id]
  ssl_policy       = google_compute_ssl_policy.cdn["cdn"].id
}

# HTTPS alone: there is no port 80 to be answered in clear.
resource "google_compute_global_forwarding_rule" "cdn" {
  for_each = local.cdn

  project               = var.project_id
  name                  = "${local.cell}-cdn"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_protocol           = "TCP"
  port_range            = "443"
  ip_address            = google_compute_global_address.cdn["cdn"].id
  target                = google_compute_target_https_proxy.cdn["cdn"].id

  lifecycle {
    # The LB reaches Cloud Run as an external load balancer: an ingress of internal
    # traffic alone shuts it out (https://cloud.google.com/run/docs/securing/ingress).
    # INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER would admit it and still take Pub/Sub's
    # pushes (the subscriptions are in this project and push to the run.app URL:
    # internal), but it shuts out the deploy's smoke test on the tag URL and every reader
    # outside Google Cloud: the default, INGRESS_TRAFFIC_ALL, is kept.
    precondition {
      condition     = var.ingress != "INGRESS_TRAFFIC_INTERNAL_ONLY"
      error_message = "cdn.enabled with ingress = INGRESS_TRAFFIC_INTERNAL_ONLY: the load balancer could not reach the cell's service. Use INGRESS_TRAFFIC_ALL (the default)."
    }
  }
}
