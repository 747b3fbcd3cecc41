# A bare HVM "firmware" for the nested Xen lab (`pmemd lab --xen --firmware ELF`, xl's
# firmware_override): no hvmloader, no Linux, so a run reaches pmemd in seconds instead of the
# minutes QEMU-xen's fw_cfg needs to load a kernel under nested TCG. With rdtsc it times N `_DSM`
# calls (function 0, NFIT handle 2, through the ram-mode DSM page pmemd populates at 0xFBFFF000
# and a notify write), then N reads of pmemd's notify port and N PCI config reads (0xcfc after
# latching 0xcf8, which Xen forwards to QEMU-xen) in interleaved rounds; prints the cycle counts
# on COM1 and halts.
# Build: as --32 -o probe.o xen_trap_probe.S && ld -m elf_i386 -N -Ttext=0x100000 -e _start -o probe.elf probe.o
.code32
.globl _start
.set N, 400
.set ROUNDS, 4
.set M, 100  # ROUNDS x M = N; a round is a loop long enough for its steady state
.set PAGE, 0xFBFFF000
.set NOTIFY, 0xA18
.text
_start:
    cli
    mov $0x200000, %esp
    mov $m_start, %esi
    call puts
    # -- N DSM calls: revision 1, function 0 on NFIT handle 2 (slot 1)
    rdtsc
    mov %eax, t0
    mov %edx, t0+4
    mov $N, %ebx
1:  movl $1, PAGE
    movl $2, PAGE+4
    movl $0, PAGE+8
    movl $0, PAGE+12
    mov $NOTIFY, %dx
    mov $PAGE, %eax
    out %eax, %dx
    dec %ebx
    jnz 1b
    call elapsed
    mov $m_dsm, %esi
    call report
    mov $m_reply, %esi
    call puts
    mov PAGE, %eax
    call puthex
    mov $' ', %al
    call putc
    mov PAGE+4, %eax
    call puthex
    mov $'\n', %al
    call putc
    # -- pmemd vs QEMU-xen, interleaved so that the host's noise falls on both alike: ROUNDS
    # rounds of M reads of pmemd's notify port then M PCI config reads (0xcfc, host bridge
    # latched in 0xcf8 once; Xen keeps the latch, the notify port does not touch it), which Xen
    # forwards to QEMU-xen. Each side's cycles add up in tp / tq.
    mov $0xcf8, %dx
    mov $0x80000000, %eax
    out %eax, %dx
    mov $ROUNDS, %edi
7:  rdtsc
    mov %eax, t0
    mov %edx, t0+4
    mov $M, %ebx
    mov $NOTIFY, %dx
2:  in %dx, %eax
    dec %ebx
    jnz 2b
    call elapsed
    add %eax, tp
    adc %edx, tp+4
    rdtsc
    mov %eax, t0
    mov %edx, t0+4
    mov $M, %ebx
    mov $0xcfc, %dx
3:  in %dx, %eax
    dec %ebx
    jnz 3b
    call elapsed
    add %eax, tq
    adc %edx, tq+4
    dec %edi
    jnz 7b
    mov tp, %eax
    mov %eax, t1
    mov tp+4, %eax
    mov %eax, t1+4
    mov $m_pmemd, %esi
    call report
    mov tq, %eax
    mov %eax, t1
    mov tq+4, %eax
    mov %eax, t1+4
    mov $m_qemu, %esi
    call report
    mov $m_exit, %esi
    call puts
4:  hlt
    jmp 4b

# edx:eax = rdtsc - t0 -> stored in t1
elapsed:
    rdtsc
    sub t0, %eax
    sbb t0+4, %edx
    mov %eax, t1
    mov %edx, t1+4
    ret

# print esi, then " N=<hex> cycles=<hex:hex>\n"
report:
    call puts
    mov $m_cycles, %esi
    call puts
    mov t1+4, %eax
    call puthex
    mov t1, %eax
    call puthex
    mov $'\n', %al
    call putc
    ret

puts:
    lodsb
    test %al, %al
    jz 9f
    call putc
    jmp puts
9:  ret

putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret

puthex:
    push %ecx
    mov $8, %ecx
5:  rol $4, %eax
    push %eax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 6f
    add $7, %al
6:  call putc
    pop %eax
    dec %ecx
    jnz 5b
    pop %ecx
    ret

.data
m_start: .asciz "pmemd-probe: start\n"
m_dsm:   .asciz "pmemd-probe: dsm_calls 400"
m_pmemd: .asciz "pmemd-probe: pmemd_port_reads 400"
m_qemu:  .asciz "pmemd-probe: qemu_pcicfg_reads 400"
m_cycles: .asciz " cycles 0x"
m_reply: .asciz "pmemd-probe: last reply head 0x"
m_exit:  .asciz "pmemd-lab: exit 0\n"
.bss
t0: .quad 0
t1: .quad 0
tp: .quad 0
tq: .quad 0
