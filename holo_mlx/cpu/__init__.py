"""What MLX's CPU backend needs to run holo_mlx fast; none of it runs on a GPU.

- kernels: exp as vectorized arithmetic, the SwiGLU gate and log-softmax built on it;
- attention: attention in chunks of query rows through that exp, the chunks spread over the lanes;
- tower: the vision tower's rows in two parts, one per lane;
- gated_delta: the gated delta rule (Qwen3.5's linear attention) in chunks for prompts;
- lanes: CPU streams that run independent halves of the work side by side;
- blas: OpenBLAS preloaded instead of the wheel's reference BLAS, its threads shared by the lanes;
- allocator: glibc's malloc tuned so freed buffers are reused, and handed back when idle.

holo_mlx/kernels.py binds the models' kernels to these on the CPU backend; holo_mlx/runtime.py
calls blas and allocator there.
"""
