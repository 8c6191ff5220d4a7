# A GKE cluster for Easel: a CPU pool for the platform and an H100 pool that autoscales from zero.
#
# The H100 pool: a3-highgpu-8g nodes (8 x NVIDIA H100 80GB, 208 vCPUs, 1872 GB RAM, 16 local SSDs),
# tainted nvidia.com/gpu=present:NoSchedule so that only pods tolerating it (the PyTorchJob replicas,
# GPU predictors) land there; GKE installs the driver and labels the nodes
# cloud.google.com/gke-accelerator=nvidia-h100-80gb, which is what those pods select.

resource "google_service_account" "nodes" {
  account_id   = "${var.cluster_name}-nodes"
  display_name = "GKE nodes of ${var.cluster_name}"
}

# The minimum a node needs: write logs and metrics, pull images from Artifact Registry.
resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "easel" {
  name     = var.cluster_name
  location = var.region

  # node pools are managed below; GKE needs a default pool at creation, removed right away
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = var.release_channel
  }

  # VPC-native networking with Dataplane V2, which enforces the charts' NetworkPolicies
  networking_mode   = "VPC_NATIVE"
  datapath_provider = "ADVANCED_DATAPATH"
  ip_allocation_policy {}

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  deletion_protection = var.deletion_protection
}

resource "google_container_node_pool" "system" {
  name     = "system"
  cluster  = google_container_cluster.easel.id
  location = var.region

  initial_node_count = 1
  autoscaling {
    min_node_count = 1
    max_node_count = var.system_max_nodes_per_zone
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.system_machine_type
    disk_size_gb    = 100
    disk_type       = "pd-balanced"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels = {
      "easel.ai/pool" = "system"
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot = true
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}

resource "google_container_node_pool" "h100" {
  name           = "h100"
  cluster        = google_container_cluster.easel.id
  location       = var.region
  node_locations = var.gpu_zones

  # from zero: the cluster autoscaler adds nodes when a pod asks for nvidia.com/gpu and removes
  # them when idle. total_* bound the whole pool (not per zone); ANY lets the autoscaler use
  # whichever zone has capacity, which matters most for Spot.
  initial_node_count = 0
  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.gpu_max_nodes
    location_policy      = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # replace GPU nodes one at a time without a surge node (H100 capacity is scarce)
  upgrade_settings {
    strategy        = "SURGE"
    max_surge       = 0
    max_unavailable = 1
  }

  node_config {
    machine_type = "a3-highgpu-8g"
    spot         = var.gpu_spot

    guest_accelerator {
      type  = "nvidia-h100-80gb"
      count = 8
      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    # the machine's 16 local SSDs back the pods' ephemeral storage (emptyDir scratch, image layers)
    ephemeral_storage_local_ssd_config {
      local_ssd_count = 16
    }

    disk_size_gb    = 200
    disk_type       = "pd-balanced"
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    gvnic {
      enabled = true
    }

    labels = {
      "easel.ai/pool" = "h100"
    }

    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    # Spot VMs cannot consume reservations; on-demand nodes may use any matching one
    reservation_affinity {
      consume_reservation_type = var.gpu_spot ? "NO_RESERVATION" : "ANY_RESERVATION"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot = true
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}
