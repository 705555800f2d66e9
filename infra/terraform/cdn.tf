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
# `private` or `no-store` one. A request with credentials bypasses the cache both ways
# (it is neither answered from it nor stored), so a token-guarded read is always the
# service's own answer to that token; Cloud Run's invoker check still judges every request
# the CDN forwards. Cloud CDN keys nothing by the caller: what it stored is served to
# whoever asks its URL (https://cloud.google.com/cdn/docs/caching), which is why only what
# the service marks `public` may be stored. docs/deploying.md#cloud-cdn-for-followers says
# when it pays and how to see it work; infra/fleet_cost.py prices it.

locals {
  cdn_enabled = var.cdn.enabled
  # A follower's reads, in a cell: a system's records (pages, and a record by its id) and
  # its Durable Streams. Nothing else is routed to the CDN's backend.
  cdn_read_paths = [
    "/systems/{system=*}/v1/records",
    "/systems/{system=*}/v1/records/**",
    "/systems/{system=*}/v1/streams/**",
  ]
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
    # make another answer. No header is named in it: Cloud CDN keys by the Vary the
    # service sends (Accept on the paged lists, where one URL is a page or a stream;
    # Accept-Encoding on a compressed answer), and answers that differ by a token's
    # reader are never stored.
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

    route_rules {
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
