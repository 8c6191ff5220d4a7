output "cluster_name" {
  value = google_container_cluster.easel.name
}

output "get_credentials" {
  description = "Point kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.easel.name} --region ${var.region} --project ${var.project_id}"
}

output "gpu_node_selector" {
  description = "Node label that selects the H100 pool (use with a toleration of nvidia.com/gpu)."
  value       = { "cloud.google.com/gke-accelerator" = "nvidia-h100-80gb" }
}
