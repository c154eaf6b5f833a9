;@ description: real mode: ud2 raises #UD, reported through the IVT stub (no error code in
;@ description: real mode; CR2 reads 0).
;@ mode: real16
;@ cpl: 0
;@ expect: exception #UD error=0 cr2=0
;@ exits: 0
    ud2
