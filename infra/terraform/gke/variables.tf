variable "project_id" {
  description = "GCP project that hosts the cluster."
  type        = string
}

variable "region" {
  description = "Region of the (regional) cluster, e.g. us-central1."
  type        = string
  default     = "us-central1"
}

variable "cluster_name" {
  description = "Name of the GKE cluster."
  type        = string
  default     = "easel"
}

variable "release_channel" {
  description = "GKE release channel (RAPID, REGULAR, STABLE)."
  type        = string
  default     = "REGULAR"
}

variable "system_machine_type" {
  description = "Machine type of the CPU pool that runs the platform (KFP, KServe, MLflow, MinIO)."
  type        = string
  default     = "e2-standard-8"
}

variable "system_max_nodes_per_zone" {
  description = "Upper bound of the CPU pool's autoscaler, per zone."
  type        = number
  default     = 3
}

variable "gpu_zones" {
  description = "Zones of the region with a3-highgpu-8g capacity (H100 is zonal; check your quota)."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-c"]
}

variable "gpu_max_nodes" {
  description = "Upper bound of the H100 pool across its zones (8 GPUs per node)."
  type        = number
  default     = 4
}

variable "gpu_spot" {
  description = "Use Spot VMs for the H100 pool: much cheaper, preemptible (training resumes from its last checkpoint in the object store)."
  type        = bool
  default     = false
}

variable "gpu_driver_version" {
  description = "NVIDIA driver GKE installs on the GPU nodes: DEFAULT or LATEST."
  type        = string
  default     = "LATEST"

  validation {
    condition     = contains(["DEFAULT", "LATEST"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be DEFAULT or LATEST."
  }
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster."
  type        = bool
  default     = true
}
